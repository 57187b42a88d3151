#!/usr/bin/env sh
# Creates a private CA and one server certificate valid for the compose service names (compose.yaml and
# compose.redis.yaml) and localhost, for running msgqueue, publisher and subscriber as separate containers (or
# processes) that verify each other.
# Usage: docker/gen-certs.sh OUT_DIR    (needs openssl; existing files are kept)
set -eu
out=${1:?usage: gen-certs.sh OUT_DIR}
mkdir -p "$out"
cd "$out"
if [ -f server.pem ]; then
  echo "certificates already in $out"
  exit 0
fi
umask 077
openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days 825 -subj "/CN=wsmq compose CA" -out ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out server-key.pem
openssl req -new -key server-key.pem -subj "/CN=wsmq" -out server.csr
cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:msgqueue,DNS:msgqueue-1,DNS:msgqueue-2,DNS:publisher,DNS:subscriber,DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 397 -sha256 \
  -extfile server.ext -out server.pem
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
chmod 640 server-key.pem
echo "CA: $out/ca.pem  certificate: $out/server.pem  key: $out/server-key.pem"
