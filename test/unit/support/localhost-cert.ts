/**
 * A self-signed certificate for localhost (P-256, valid until 2126), for TLS tests that need a
 * real handshake but no CA: made once with
 * `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500
 * -subj /CN=localhost -addext subjectAltName=DNS:localhost`.
 */
export const LOCALHOST_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgd1NH+i5FyR98MTwa
IkGXzcmkeDKFes6Ag+MDCJNOf8ChRANCAAShYbjviOOFbU0IwN3tT5WmAofvYHXB
ii/BWseJg2ZlUboMGkyXraRdPiaKxp60o2DzmGS8Rzetdb+H66hrXKa1
-----END PRIVATE KEY-----
`;

export const LOCALHOST_CERT = `-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUfWkGf0cmh3JJ3P93o+cGSdpYjjYwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMTIxMjc0NFoYDzIxMjYxMTA3
MjEyNzQ0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAShYbjviOOFbU0IwN3tT5WmAofvYHXBii/BWseJg2ZlUboMGkyXraRd
PiaKxp60o2DzmGS8Rzetdb+H66hrXKa1o2kwZzAdBgNVHQ4EFgQUdSAcBEJblKsM
9Nz5nyZLwmlNVW4wHwYDVR0jBBgwFoAUdSAcBEJblKsM9Nz5nyZLwmlNVW4wDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID
SAAwRQIhAMqI1nzm7uFiafYdqR7h6I7hhr8Kel/bGq4BilyYhBQWAiAuOva+vvJ0
2bXWgh470W8t9IHJ6+9+dqsrI/22MdQwbg==
-----END CERTIFICATE-----
`;
