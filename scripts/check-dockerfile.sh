#!/usr/bin/env bash
# Checks that the Dockerfile's build stage copies everything cargo needs, without a container engine.
#
# It replays the build stage (the stage the runtime stage copies `--from`) in a scratch directory: every
# `WORKDIR`, every `COPY` (files and directories taken from the repository, as the Docker build context
# would give them, `.dockerignore` entries left out) and every `RUN` line, in order, with `cargo` replaced
# by a shim. Where the Dockerfile runs `cargo build ...`, the shim runs
#   cargo metadata --locked --format-version 1 --no-deps      (the workspace loads: every member's manifest)
#   cargo check <the same arguments, without build/--release>  (every source file the build compiles is there)
# in the replayed tree, so a missing manifest, lock entry or source file fails here as it would in
# `docker build`. The dependencies are not rebuilt: CARGO_TARGET_DIR (when set, else <repo>/target) is the
# repository's own target directory, whose checked dependencies are reused.
#
#   scripts/check-dockerfile.sh              # the check (runs cargo metadata and cargo check)
#   DRY_RUN=1 scripts/check-dockerfile.sh    # replays the COPY and RUN lines, prints the cargo commands it
#                                            # would run and the replayed tree, runs no cargo
#   DOCKERFILE=path scripts/check-dockerfile.sh   # another Dockerfile (default <repo>/Dockerfile)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="${DOCKERFILE:-$repo/Dockerfile}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
dry="${DRY_RUN:-0}"
[ "$dry" = "0" ] && dry=""

die() { printf 'check-dockerfile: %s\n' "$*" >&2; exit 1; }
note() { printf 'check-dockerfile: %s\n' "$*"; }

[ -f "$dockerfile" ] || die "no Dockerfile at $dockerfile"

# A fixed scratch directory (under the target dir, which is git- and docker-ignored): the package keeps
# the same path from run to run, so cargo reuses and overwrites its artifacts instead of adding new ones.
# A dry run uses a temp dir of its own, removed at the end.
if [ -n "$dry" ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/check-dockerfile.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
else
  work="$target_dir/check-dockerfile"
  rm -rf "$work"
fi
mkdir -p "$work/fs" "$work/bin"
fs="$work/fs"

# Instructions, one a line: continuation lines joined, comments and blank lines dropped.
instructions() {
  awk '
    /^[[:space:]]*#/ && cont == "" { next }
    {
      line = $0
      if (line ~ /\\[[:space:]]*$/) { sub(/\\[[:space:]]*$/, "", line); cont = cont line " "; next }
      line = cont line; cont = ""
      if (line ~ /^[[:space:]]*$/) next
      print line
    }
  ' "$dockerfile"
}

# The build stage: the one named by the first `COPY --from=<stage>`; the first stage if none.
from_stage="$(instructions | sed -nE 's/^[[:space:]]*COPY[[:space:]].*--from=([^[:space:]]+).*/\1/Ip' | head -n1)"
stage_lines="$(instructions | awk -v want="$from_stage" '
  BEGIN { n = -1 }
  toupper($1) == "FROM" {
    n++; name = ""
    for (i = 2; i <= NF; i++) if (toupper($i) == "AS" && i < NF) name = $(i + 1)
    inside = (want == "" && n == 0) || (want != "" && (tolower(name) == tolower(want) || want == n ""))
    next
  }
  inside { print }
')"
[ -n "$stage_lines" ] || die "no build stage found (stage '${from_stage:-#0}') in $dockerfile"
note "build stage: ${from_stage:-#0} of $dockerfile"

# .dockerignore entries (plain paths only: enough for this repository's file) are not in the context.
ignored() {
  local p="${1#./}" e
  [ -f "$repo/.dockerignore" ] || return 1
  while IFS= read -r e || [ -n "$e" ]; do
    e="${e%%#*}"; e="${e%/}"; e="${e#./}"; e="$(printf '%s' "$e" | tr -d '[:space:]')"
    [ -n "$e" ] || continue
    case "$p" in "$e" | "$e"/*) return 0 ;; esac
  done <"$repo/.dockerignore"
  return 1
}

# The cargo shim the replayed RUN lines call.
cat >"$work/bin/cargo" <<'SHIM'
#!/usr/bin/env bash
set -euo pipefail
printf 'check-dockerfile: Dockerfile runs: cargo %s (in %s)\n' "$*" "$PWD"
args=()
sub=""
for a in "$@"; do
  if [ -z "$sub" ] && [ "${a#-}" = "$a" ]; then sub="$a"; continue; fi
  [ "$a" = "--release" ] && continue
  args+=("$a")
done
[ "$sub" = "build" ] || { printf 'check-dockerfile: only `cargo build` is replayed, not `cargo %s`\n' "$sub" >&2; exit 1; }
# Without cargo too (dry runs): every workspace member named on the `members = [...]` line has its manifest.
[ -f Cargo.toml ] || { echo "check-dockerfile: no Cargo.toml in $PWD" >&2; exit 1; }
members="$(sed -nE 's/^[[:space:]]*members[[:space:]]*=[[:space:]]*\[(.*)\].*/\1/p' Cargo.toml | tr ',' '\n' | tr -d ' "')"
for m in $members; do
  [ -f "$m/Cargo.toml" ] || { echo "check-dockerfile: workspace member '$m' has no $m/Cargo.toml here" >&2; exit 1; }
done
if [ -n "${CHECK_DOCKERFILE_DRY:-}" ]; then
  printf 'check-dockerfile: would run: cargo metadata --locked --format-version 1 --no-deps\n'
  printf 'check-dockerfile: would run: cargo check %s\n' "${args[*]}"
  exit 0
fi
"$CHECK_DOCKERFILE_CARGO" metadata --locked --format-version 1 --no-deps >/dev/null
"$CHECK_DOCKERFILE_CARGO" check "${args[@]}"
SHIM
chmod +x "$work/bin/cargo"

real_cargo=""
if [ -z "$dry" ]; then
  real_cargo="$(command -v cargo)" || die "cargo not found"
fi

workdir="/"
cargo_runs=0
while IFS= read -r line; do
  read -r -a words <<<"$line"
  op="$(printf '%s' "${words[0]}" | tr '[:lower:]' '[:upper:]')"
  rest="${line#*"${words[0]}"}"
  case "$op" in
    WORKDIR)
      dir="${words[1]}"
      case "$dir" in /*) workdir="$dir" ;; *) workdir="${workdir%/}/$dir" ;; esac
      mkdir -p "$fs$workdir"
      ;;
    COPY | ADD)
      srcs=()
      for w in "${words[@]:1}"; do
        case "$w" in
          --from=*) die "COPY --from in the build stage is not supported: $line" ;;
          --*) ;;
          \[*) die "the JSON form of COPY is not supported: $line" ;;
          *) srcs+=("$w") ;;
        esac
      done
      [ "${#srcs[@]}" -ge 2 ] || die "COPY without a destination: $line"
      dest="${srcs[-1]}"
      unset 'srcs[-1]'
      case "$dest" in /*) ;; *) dest="${workdir%/}/${dest#./}" ;; esac
      if [ "${#srcs[@]}" -gt 1 ] && [ "${dest%/}" = "$dest" ]; then
        die "COPY of several sources needs a destination ending in /: $line"
      fi
      for s in "${srcs[@]}"; do
        from="$repo/${s#./}"
        ignored "$s" && die "COPY $s: excluded by .dockerignore, so not in the build context"
        [ -e "$from" ] || die "COPY $s: no such file in the repository (docker build would fail here)"
        if [ -d "$from" ]; then
          mkdir -p "$fs$dest"
          cp -a "$from/." "$fs$dest/"
        elif [ "${dest%/}" != "$dest" ] || [ -d "$fs$dest" ]; then
          mkdir -p "$fs$dest"
          cp -a "$from" "$fs${dest%/}/"
        else
          mkdir -p "$(dirname "$fs$dest")"
          cp -a "$from" "$fs$dest"
        fi
        note "COPY $s -> $dest"
      done
      ;;
    RUN)
      case "$rest" in
        *apt-get* | *curl\ * | *wget\ * | *rustup*) note "RUN skipped (installs things): $rest"; continue ;;
      esac
      case "$rest" in *cargo*) cargo_runs=$((cargo_runs + 1)) ;; esac
      note "RUN$rest"
      (
        cd "$fs$workdir"
        export PATH="$work/bin:$PATH" CARGO_TARGET_DIR="$target_dir" CHECK_DOCKERFILE_CARGO="$real_cargo"
        [ -n "$dry" ] && export CHECK_DOCKERFILE_DRY=1
        sh -ec "$rest"
      ) || die "RUN failed: $rest"
      ;;
    ENV | ARG | LABEL | EXPOSE | USER | CMD | ENTRYPOINT | HEALTHCHECK | STOPSIGNAL | SHELL | VOLUME | ONBUILD) ;;
    *) die "unknown instruction in the build stage: $line" ;;
  esac
done <<<"$stage_lines"

[ "$cargo_runs" -gt 0 ] || die "the build stage runs no cargo build"
if [ -n "$dry" ]; then
  note "dry run: the replayed tree:"
  (cd "$fs" && find . -mindepth 1 | sed 's|^\./|  /|' | sort)
else
  note "ok: every cargo step of the build stage found what it needs"
fi
