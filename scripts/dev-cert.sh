#!/bin/sh
# A private CA and an ECDSA P-256 certificate for localhost signed by it,
# for trying the TLS listener (docs/operations.md, "TLS"; docker-compose.yml mounts
# the directory). Test certificates only: the keys are made readable by
# the container's tollgate user and must not be used for anything real.
#   scripts/dev-cert.sh [DIR]      (default: deploy/tls)
set -eu
dir=${1:-deploy/tls}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.pem -days 30 -subj "/CN=tollgate test CA"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout site.key -out site.csr -subj "/CN=localhost"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > site.ext
openssl x509 -req -in site.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -days 30 -extfile site.ext -out site.pem
rm -f site.csr site.ext ca.srl
chmod 644 site.key
echo "$dir: ca.pem (trust this), site.pem + site.key (serve these)"
