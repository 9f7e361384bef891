#!/usr/bin/env bash
# `docker compose up`, run for real: builds the project's image from the Dockerfile, starts docker-compose.yml,
# and drives it from outside the containers as a user would (tests/compose/api_check.py):
#   1. `up -d`, every service healthy; log in as the .env admin; a 2-iteration run on the offline SmolLM2 succeeds
#      in the worker container; the playground worker samples it;
#   2. `down` (volumes kept) and `up -d --scale worker=2`: the run, its metrics, samples and checkpoints are still
#      there, and the playground still samples it;
#   3. two runs train at once on the two workers;
#   4. `stop` while one of them trains: the worker ends its iteration, checkpoints, and the run is `stopped`;
#      `up` again and Resume: it carries on from that checkpoint;
#   5. `down -v`, and the images it built are removed.
#
# Where Docker Hub is unreachable (MEAL_CHECK_BASE_IMAGES=debian, the default) the base images are stand-ins built
# from Debian packages (tests/compose/README.md), passed through the variables the compose file and the Dockerfile
# honour (MEAL_POSTGRES_IMAGE, MEAL_REDIS_IMAGE, PYTHON_IMAGE, NODE_IMAGE); MEAL_CHECK_BASE_IMAGES=official uses the
# official images instead. torch's CPU wheel comes from pip's find-links folder when it holds one (TORCH_WHEEL).
#
# Installs Debian's docker.io (and docker-compose, debootstrap) when missing, and starts dockerd when it is not
# running (it is left running). Needs root for that. Knobs:
#   MEAL_CHECK_KEEP_BASE_IMAGES=1   keep the Debian stand-ins for the next run (default: removed with the rest)
#   MEAL_CHECK_KEEP_STACK=1         on failure, leave the stack up for a look (default: down -v)
#   MEAL_CHECK_TORCH_WHEEL=FILE     the CPU torch wheel to build with (default: found in pip's find-links)
#   MEAL_CHECK_CA=FILE              the CA bundle the stand-ins trust (default /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
started=$(date +%s)
say() { echo "compose check [$(($(date +%s) - started)) s]: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

work="$(mktemp -d /tmp/meal-compose-check.XXXXXX)"
project="mealcheck$(basename "$work" | cut -d. -f2 | tr 'A-Z' 'a-z' | tr -dc 'a-z0-9')"
tag="$project"

# -- Docker ---------------------------------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
if docker compose version >/dev/null 2>&1; then
  compose_bin=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose_bin=(docker-compose)
else
  missing+=(docker-compose)
  compose_bin=(docker-compose)
fi
base_images="${MEAL_CHECK_BASE_IMAGES:-debian}"
[ "$base_images" = debian ] && ! command -v debootstrap >/dev/null && missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: /var/log/meal-check-dockerd.log)"
  setsid dockerd >/var/log/meal-check-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "dockerd did not start: $(tail -5 /var/log/meal-check-dockerd.log)"
fi
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0  # the classic builder: no buildx plugin needed
images_before="$work/images-before"
docker images -aq --no-trunc | sort -u > "$images_before"
docker volume ls -q | sort -u > "$work/volumes-before"

meal_image="meal-check/meal-studio:$tag"
built_images=("$meal_image")
http_pid=""
cleanup() {
  local status=$?
  set +e
  if [ $status -ne 0 ] && [ -n "${compose_ready:-}" ]; then
    say "logs of the stack (last 60 lines each):"
    for service in postgres redis migrate web worker playground-worker; do
      echo "---- $service ----" >&2
      compose logs --no-color --tail=60 "$service" >&2 2>/dev/null
    done
  fi
  if [ -n "${compose_ready:-}" ]; then
    if [ $status -ne 0 ] && [ -n "${MEAL_CHECK_KEEP_STACK:-}" ]; then
      say "left up: ${compose_bin[*]} --env-file $work/.env -p $project ..."
      exit $status
    fi
    compose down -v --remove-orphans >/dev/null 2>&1
  fi
  [ -n "$http_pid" ] && kill "$http_pid" 2>/dev/null
  for image in "${built_images[@]}"; do docker rmi "$image" >/dev/null 2>&1; done
  # ...and the build's intermediate images (stages, untagged): those not there before this check started
  docker images -aq --no-trunc | sort -u | comm -13 "$images_before" - | xargs -r docker rmi >/dev/null 2>&1
  rm -rf "$work"
  if [ $status -eq 0 ]; then say "passed in $(($(date +%s) - started)) s"; else say "failed (exit $status)"; fi
  exit $status
}
trap cleanup EXIT

# -- base images ----------------------------------------------------------------------------------------------------
if [ "$base_images" = debian ]; then
  base="meal-check/debian:bookworm"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    say "building $base from Debian packages (debootstrap)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
      || die "debootstrap: $(tail -5 "$work/debootstrap.log")"
    # The registries are reached through this machine's proxy: trust its CA bundle in pip and npm.
    cp "${MEAL_CHECK_CA:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs/usr/local/share/meal-check-ca.crt"
    tar -C "$rootfs" -c . | docker import \
      --change 'ENV PIP_CERT=/usr/local/share/meal-check-ca.crt NODE_EXTRA_CA_CERTS=/usr/local/share/meal-check-ca.crt LANG=C.UTF-8' \
      --change 'CMD ["bash"]' - "$base" >/dev/null
    rm -rf "$rootfs"
  fi
  for standin in python node postgres redis; do
    image="meal-check/$standin:bookworm"
    if ! docker image inspect "$image" >/dev/null 2>&1; then
      say "building the stand-in $image (tests/compose/$standin)"
      docker build -q --build-arg "BASE=$base" -t "$image" "tests/compose/$standin" >"$work/build-$standin.log" 2>&1 \
        || die "building $image: $(tail -20 "$work/build-$standin.log")"
    fi
  done
  if [ -z "${MEAL_CHECK_KEEP_BASE_IMAGES:-}" ]; then
    built_images+=(meal-check/python:bookworm meal-check/node:bookworm meal-check/postgres:bookworm
      meal-check/redis:bookworm "$base")
  else  # kept: not among what the cleanup removes
    docker images -aq --no-trunc | sort -u > "$images_before"
  fi
  standins=(PYTHON_IMAGE=meal-check/python:bookworm NODE_IMAGE=meal-check/node:bookworm
    MEAL_POSTGRES_IMAGE=meal-check/postgres:bookworm MEAL_REDIS_IMAGE=meal-check/redis:bookworm)
else
  standins=()
fi

# -- torch's CPU wheel, served to the build over the Docker bridge --------------------------------------------------
wheel="${MEAL_CHECK_TORCH_WHEEL:-}"
if [ -z "$wheel" ]; then
  for folder in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true); do
    for candidate in "$folder"/torch-2.13.0+cpu-cp311-*.whl; do [ -f "$candidate" ] && wheel="$candidate"; done
  done
fi
torch_wheel=""
if [ -n "$wheel" ]; then
  bridge="$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
  python3 -m http.server "$port" --bind "$bridge" --directory "$(dirname "$wheel")" >"$work/wheel-server.log" 2>&1 &
  http_pid=$!
  torch_wheel="http://$bridge:$port/$(basename "$wheel" | sed 's/+/%2B/')"
  say "the build installs torch from $wheel"
fi

# -- .env, as docs/deploy.md has the user write it ------------------------------------------------------------------
password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')"
web_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
{
  echo "MEAL_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
  echo "MEAL_ADMIN_NAME=admin"
  echo "MEAL_ADMIN_PASSWORD=$password"
  echo "MEAL_IMAGE=$meal_image"
  echo "MEAL_WEB_PORT=$web_port"
  echo "TORCH_WHEEL=$torch_wheel"
  for line in "${standins[@]}"; do echo "$line"; done
} >"$work/.env"
compose() { "${compose_bin[@]}" --env-file "$work/.env" -p "$project" -f "$ROOT/docker-compose.yml" "$@"; }
url="http://127.0.0.1:$web_port"
api() { python3 tests/compose/api_check.py "$url" admin "$password" "$@"; }

# -- build ----------------------------------------------------------------------------------------------------------
say "building $meal_image: ${compose_bin[*]} build (log: $work/build.log)"
build_started=$(date +%s)
compose build >"$work/build.log" 2>&1 || die "the image did not build: $(tail -30 "$work/build.log")"
build_s=$(($(date +%s) - build_started))
image_size="$(docker image inspect -f '{{.Size}}' "$meal_image" | awk '{printf "%.2f GB", $1 / 1e9}')"
say "built in $build_s s: $meal_image is $image_size"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^meal-check/' >&2 || true

# -- wait until every service is up: healthy where it has a health check, migrate exited 0 ---------------------------
wait_healthy() {
  local expect_workers=$1 deadline=$(($(date +%s) + 300)) line bad
  while :; do
    bad=""
    local states
    states="$(compose ps -q | xargs -r docker inspect -f \
      '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}')"
    while read -r name state health code; do
      case "$name" in
        *migrate*) { [ "$state" = exited ] && [ "$code" = 0 ]; } || bad+=" $name:$state/$code" ;;
        *) { [ "$state" = running ] && [ "$health" = healthy ]; } || bad+=" $name:$state/$health" ;;
      esac
      case "$state/$code" in exited/[1-9]*) die "$name exited with code $code" ;; esac
    done <<<"$states"
    local workers
    workers=$(grep -c -E "^/${project}[_-]worker[_-][0-9]+ " <<<"$states" || true)
    [ -z "$bad" ] && [ "$workers" = "$expect_workers" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "not healthy after 300 s:$bad"
    sleep 2
  done
  say "every service is up: $(tr '\n' ',' <<<"$states" | sed 's|/||g; s/,$//')"
}

# -- 1. up, a run, the playground ---------------------------------------------------------------------------------
say "docker compose up -d"
compose_ready=1
up_started=$(date +%s)
compose up -d >"$work/up.log" 2>&1 || die "up: $(tail -20 "$work/up.log")"
wait_healthy 1
say "healthy $(($(date +%s) - up_started)) s after up"

run1=$(api launch compose-check tests/compose/tiny_run.json)
say "launched run $run1 (2 iterations, SmolLM2 on the CPU)"
run_started=$(date +%s)
done1="$(api wait "$run1" succeeded 1200)"
say "run $run1 succeeded in $(($(date +%s) - run_started)) s: $done1"
worker_host="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["worker"].rsplit(":", 1)[0])' "$done1")"
worker_hosts="$(compose ps -q worker | xargs docker inspect -f '{{.Config.Hostname}}')"
grep -qx "$worker_host" <<<"$worker_hosts" || die "run $run1 was trained by $worker_host, not a worker container"
# (the log to a file first: `grep -q` ends at the first match, and under pipefail the writer's SIGPIPE fails it)
compose logs --no-color worker >"$work/worker.log" 2>&1
grep -q "Task meal.train_run\[.*\] succeeded" "$work/worker.log" \
  || die "the worker container's log has no succeeded meal.train_run"
api playground "$run1" >/dev/null
api record "$run1" >"$work/record-before.json"
python3 - "$work/record-before.json" <<'EOF' || die "run $run1's records are incomplete: $(cat "$work/record-before.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "succeeded" and r["iteration"] == 2, r
assert r["metric_keys"] >= 5 and r["samples"] > 0 and r["evaluations"], r
assert r["checkpoints"][0] == "iter-000002" and "base" in r["checkpoints"], r["checkpoints"]
print(f"compose check: run {r['id']}: {r['metric_keys']} metric series, {r['samples']} samples, "
      f"evaluations at {r['evaluations']}, checkpoints {r['checkpoints']}", file=sys.stderr)
EOF

# The operator's commands of docs/deploy.md, in the containers: a teammate, a database backup.
compose exec -T web meal users add compose-reviewer --role reviewer >"$work/users.log" 2>&1 \
  || die "meal users add: $(tail -5 "$work/users.log")"
compose exec -T postgres pg_dump -U meal -Fc meal >"$work/meal.dump" 2>"$work/pg_dump.log" \
  || die "pg_dump: $(tail -5 "$work/pg_dump.log")"
[ "$(head -c 5 "$work/meal.dump")" = PGDMP ] || die "pg_dump wrote no custom-format dump"
say "exec web meal users add, exec postgres pg_dump: a user added, a $(stat -c %s "$work/meal.dump")-byte dump"

# -- 2. restart: down (volumes kept), up with two training workers ----------------------------------------------------
say "docker compose down; docker compose up -d --scale worker=2"
compose down >"$work/down.log" 2>&1 || die "down: $(tail -20 "$work/down.log")"
compose up -d --scale worker=2 >"$work/up2.log" 2>&1 || die "up: $(tail -20 "$work/up2.log")"
wait_healthy 2
api record "$run1" >"$work/record-after.json"
cmp -s "$work/record-before.json" "$work/record-after.json" \
  || die "run $run1 changed over the restart: $(diff "$work/record-before.json" "$work/record-after.json")"
say "after the restart run $run1 is as it was (run, metrics, samples, evaluations, checkpoints)"
api playground "$run1" >/dev/null

# -- 3. two runs at once; 4. stop while one trains: it checkpoints and ends stopped ---------------------------------
run2=$(api launch compose-check-a tests/compose/tiny_run.json)
run3=$(api launch compose-check-stopped tests/compose/tiny_run.json 50)
say "launched runs $run2 (2 iterations) and $run3 (50)"
api wait "$run2" succeeded 1200 >/dev/null
api wait-iteration "$run3" 1 900
api overlap "$run2" "$run3"
say "docker compose stop worker (run $run3 training)"
stop_started=$(date +%s)
compose stop worker >"$work/stop.log" 2>&1 || die "stop: $(tail -20 "$work/stop.log")"
say "the workers stopped in $(($(date +%s) - stop_started)) s"
api wait "$run3" stopped 60 >/dev/null || die "run $run3 did not end stopped"
api record "$run3" >"$work/record-stopped.json"
python3 - "$work/record-stopped.json" <<'EOF' || die "run $run3 did not checkpoint on stop: $(cat "$work/record-stopped.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "stopped" and "shut down after iteration" in (r["error"] or ""), r
assert r["checkpoints"][0] == f"iter-{r['iteration']:06d}", (r["iteration"], r["checkpoints"])
print(f"compose check: run {r['id']} stopped at iteration {r['iteration']} with checkpoint {r['checkpoints'][0]}: "
      f"{r['error']}", file=sys.stderr)
EOF
# ...and resumable: the workers start again, and a resumed run carries on from that checkpoint
stopped_at="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["iteration"])' "$work/record-stopped.json")"
compose up -d --scale worker=2 >"$work/up3.log" 2>&1 || die "up: $(tail -20 "$work/up3.log")"
wait_healthy 2
api post "/api/runs/$run3/resume"
api wait-iteration "$run3" $((stopped_at + 1)) 900
compose logs --no-color worker >"$work/worker.log" 2>&1
grep -q "run $run3: resuming from iteration $stopped_at" "$work/worker.log" \
  || die "run $run3 was not resumed from iteration $stopped_at"
say "run $run3 resumed from iteration $stopped_at and trains on; stopping it from the API"
api post "/api/runs/$run3/stop"
api wait "$run3" stopped 600 >/dev/null

# -- 5. down -v (the trap removes the images) -------------------------------------------------------------------
compose down -v --remove-orphans >"$work/down-v.log" 2>&1 || die "down -v: $(tail -20 "$work/down-v.log")"
compose_ready=""
left="$(docker volume ls -q | sort -u | comm -13 "$work/volumes-before" -)"
[ -z "$left" ] || die "volumes left behind after down -v: $left"
[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ] || die "containers left after down -v"
say "down -v: containers, network and volumes removed; image $meal_image was $image_size, built in $build_s s"
