#!/usr/bin/env node
const HELP = `usage: ublk <command> [options]
commands: add, del, list, recover, features, help`;

console.log(HELP);
