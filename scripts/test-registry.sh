#!/usr/bin/env bash
# A real OCI registry for the tests: Debian's `docker-registry` (distribution 2.8) on
# 127.0.0.1 with htpasswd auth, started in the background unless one already answers
# there with these credentials. The tests find it through the same variables:
#
#   FLEET_TEST_REGISTRY           host:port           (default 127.0.0.1:5000)
#   FLEET_TEST_REGISTRY_USER      htpasswd user       (default fleet-test)
#   FLEET_TEST_REGISTRY_PASSWORD  its password        (default fleet-test-password)
#   FLEET_TEST_REGISTRY_DIR       config, htpasswd, blobs and log (default /var/lib/fleet-test-registry);
#                                 its blobs are emptied each time a registry is started
#
# It serves plain HTTP: Docker allows that for registries on 127.0.0.0/8 without
# configuration. Needs `docker-registry` and `htpasswd` (apache2-utils); .ci/run installs them.
set -euo pipefail
ADDR=${FLEET_TEST_REGISTRY:-127.0.0.1:5000}
REG_USER=${FLEET_TEST_REGISTRY_USER:-fleet-test}
REG_PASSWORD=${FLEET_TEST_REGISTRY_PASSWORD:-fleet-test-password}
DIR=${FLEET_TEST_REGISTRY_DIR:-/var/lib/fleet-test-registry}

# GET /v2/ with the credentials and without: "200 401" (ours is up), "200 200" (an open
# registry: Debian's packaged service, which the package starts where an init system
# runs), "401 401" (someone else's), "000 000" (nothing).
status() {
  python3 - "$ADDR" "$REG_USER" "$REG_PASSWORD" <<'EOF'
import base64, sys, urllib.error, urllib.request
addr, user, password = sys.argv[1:4]
token = base64.b64encode(f"{user}:{password}".encode()).decode()
codes = []
for headers in ({"Authorization": f"Basic {token}"}, {}):
    request = urllib.request.Request(f"http://{addr}/v2/", headers=headers)
    try:
        codes.append(str(urllib.request.urlopen(request, timeout=5).status))
    except urllib.error.HTTPError as exc:
        codes.append(str(exc.code))
    except OSError:
        codes.append("000")
print(" ".join(codes))
EOF
}

case "$(status)" in
  "200 401") echo "registry on $ADDR: already running"; exit 0 ;;
  "200 200")
    echo "an open registry holds $ADDR (the package's own service?): stopping it" >&2
    if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry; then
      systemctl disable --now docker-registry
    else
      /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    sleep 1 ;;
  "000 000") ;;
  *) echo "something on $ADDR refuses the test credentials; stop it or set FLEET_TEST_REGISTRY" >&2
     exit 1 ;;
esac

# What earlier runs pushed is of no use to this one: start empty, so runs never pile up
# blobs on the disk.
rm -rf "$DIR/data"
mkdir -p "$DIR/data"
htpasswd -Bbc "$DIR/htpasswd" "$REG_USER" "$REG_PASSWORD" 2>/dev/null
cat >"$DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/data
  delete:
    enabled: true
http:
  addr: $ADDR
auth:
  htpasswd:
    realm: fleet-test-registry
    path: $DIR/htpasswd
EOF
# setsid: the registry outlives this script (and a CI step's process group).
setsid nohup docker-registry serve "$DIR/config.yml" >>"$DIR/registry.log" 2>&1 </dev/null &
for _ in $(seq 30); do
  [ "$(status)" = "200 401" ] && { echo "registry on $ADDR: started (log: $DIR/registry.log)"; exit 0; }
  sleep 1
done
echo "the registry on $ADDR did not come up; its log:" >&2
tail -n 30 "$DIR/registry.log" >&2
exit 1
