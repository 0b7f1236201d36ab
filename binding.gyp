{
  "targets": [
    {
      "target_name": "sys",
      "sources": ["native/sys.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
