{
  "targets": [
    {
      "target_name": "sys",
      "sources": ["native/sys.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
