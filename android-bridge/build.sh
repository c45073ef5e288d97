#!/usr/bin/env bash
# Build and test the edge-run Kotlin bridge with nothing but Java 17 and npm.
#
# usage: android-bridge/build.sh [step ...]      (no step = fetch jar tests example unit)
#   fetch             get kotlin-compiler@$KOTLIN_VERSION from npm into the cache (once)
#   jar               compile src/main -> build/edge-run-bridge.jar (the library an app uses)
#   tests             compile src/test -> build/edge-run-bridge-tests.jar
#   example           compile example/ -> build/edge-run-example.jar
#   unit              run the unit tests (JSON codec, SSE reader, error mapping, closed port)
#   live URL [KEY]    run every test, including those against a running `edge-run serve` at URL
#   run-example URL   run the JVM example program against URL
#   classpath         print the runtime classpath of the tests (for tests/android/)
#
# env: EDGE_KOTLIN_CACHE (default ~/.cache/edge-run-kotlin), KOTLIN_HOME (use an existing compiler),
#      EDGE_BRIDGE_BUILD (output folder, default android-bridge/build)
set -euo pipefail

KOTLIN_VERSION=2.4.20
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${EDGE_KOTLIN_CACHE:-$HOME/.cache/edge-run-kotlin}
KOTLIN_HOME=${KOTLIN_HOME:-$CACHE/kotlin-compiler-$KOTLIN_VERSION}
BUILD=${EDGE_BRIDGE_BUILD:-$HERE/build}
LIB_JAR=$BUILD/edge-run-bridge.jar
TEST_JAR=$BUILD/edge-run-bridge-tests.jar
EXAMPLE_JAR=$BUILD/edge-run-example.jar
KOTLINC=$KOTLIN_HOME/bin/kotlinc-jvm
STDLIB=$KOTLIN_HOME/lib/kotlin-stdlib.jar
KTEST=$KOTLIN_HOME/lib/kotlin-test.jar   # assertions only; the runner is ours (no JUnit here)

log() { echo "[android-bridge] $*" >&2; }

fetch() {
  if [[ -x $KOTLINC && -f $STDLIB && -f $KTEST ]]; then return; fi
  command -v npm >/dev/null || { log "npm is needed to fetch the Kotlin compiler (apt-get install npm)"; exit 1; }
  command -v java >/dev/null || { log "java 17 is needed (apt-get install openjdk-17-jdk-headless)"; exit 1; }
  mkdir -p "$CACHE"
  local tmp
  tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
  log "fetching kotlin-compiler@$KOTLIN_VERSION from npm into $KOTLIN_HOME"
  (cd "$tmp" && npm pack "kotlin-compiler@$KOTLIN_VERSION" --silent >/dev/null)  # npm checks the registry's integrity hash
  tar -xzf "$tmp/kotlin-compiler-$KOTLIN_VERSION.tgz" -C "$tmp"
  [[ -x $tmp/package/bin/kotlinc-jvm ]] || { log "kotlin-compiler@$KOTLIN_VERSION has no bin/kotlinc-jvm"; exit 1; }
  mv -T "$tmp/package" "$KOTLIN_HOME" 2>/dev/null || [[ -x $KOTLINC ]]  # atomic; a concurrent fetch may have won
  rm -rf "$tmp"
}

# newer OUT SRC... : true when OUT exists and is newer than every file under SRC... and this script
newer() {
  local out=$1; shift
  [[ -f $out ]] || return 1
  [[ -z $(find "$@" "$HERE/build.sh" -newer "$out" -type f 2>/dev/null | head -1) ]]
}

# Compiled jars are also kept in the cache under a hash of every source and this script, so a fresh
# checkout (CI) with unchanged sources skips the ~60 s of compilation.
SOURCES_KEY=$( (echo "$KOTLIN_VERSION"; cd "$HERE" && find build.sh src example -type f -name '*.kt' -o -name build.sh | sort | xargs sha256sum) | sha256sum | cut -c1-16)
JAR_CACHE=$CACHE/builds/$SOURCES_KEY

# kc OUT CLASSPATH SRC... : compile SRC into the jar OUT (written atomically)
kc() {
  local out=$1 cp=$2; shift 2
  if newer "$out" "$@" && [[ -z $cp || ! $LIB_JAR -nt $out ]]; then log "$(basename "$out") is up to date"; return; fi
  mkdir -p "$BUILD"
  if [[ -f $JAR_CACHE/$(basename "$out") ]]; then
    log "$(basename "$out") from the cache ($JAR_CACHE)"
    cp "$JAR_CACHE/$(basename "$out")" "$out.tmp.jar" && mv -f "$out.tmp.jar" "$out"
    return
  fi
  fetch
  log "compiling $(basename "$out")"
  local args=(-jvm-target 1.8 -Werror -d "$out.tmp.jar")
  [[ -n $cp ]] && args+=(-cp "$cp")
  "$KOTLINC" "${args[@]}" $(find "$@" -name '*.kt' | sort) 2>&1 | grep -v '^warning: unable to find kotlin-stdlib' >&2 || true
  [[ -f $out.tmp.jar ]] || { log "compilation of $(basename "$out") failed"; exit 1; }
  mv -f "$out.tmp.jar" "$out"
  mkdir -p "$JAR_CACHE" && cp "$out" "$JAR_CACHE/.$(basename "$out").tmp" && mv -f "$JAR_CACHE/.$(basename "$out").tmp" "$JAR_CACHE/$(basename "$out")"
  # keep the 6 newest source versions
  ls -1dt "$CACHE"/builds/*/ 2>/dev/null | tail -n +7 | xargs -r rm -rf
}

jar_()     { kc "$LIB_JAR" "" "$HERE/src/main/kotlin"; }
tests_()   { jar_; kc "$TEST_JAR" "$LIB_JAR:$KTEST" "$HERE/src/test/kotlin"; }
example_() { jar_; kc "$EXAMPLE_JAR" "$LIB_JAR" "$HERE/example"; }
test_cp()  { echo "$LIB_JAR:$TEST_JAR:$STDLIB:$KTEST"; }

[[ $# -eq 0 ]] && set -- fetch jar tests example unit
while [[ $# -gt 0 ]]; do
  step=$1; shift
  case $step in
    fetch) fetch ;;
    jar) jar_ ;;
    tests) tests_ ;;
    example) example_ ;;
    unit) tests_; java -cp "$(test_cp)" dev.edgerun.bridge.test.RunTestsKt unit ;;
    live)
      [[ $# -ge 1 ]] || { log "usage: build.sh live URL [API_KEY]"; exit 2; }
      url=$1; shift; key=""
      if [[ $# -ge 1 && $1 != -* && ! $1 =~ ^(fetch|jar|tests|example|unit|live|run-example|classpath)$ ]]; then key=$1; shift; fi
      tests_; java -cp "$(test_cp)" dev.edgerun.bridge.test.RunTestsKt live "$url" $key ;;
    run-example)
      [[ $# -ge 1 ]] || { log "usage: build.sh run-example URL"; exit 2; }
      url=$1; shift
      example_; java -cp "$EXAMPLE_JAR:$LIB_JAR:$STDLIB" dev.edgerun.example.EdgeExampleKt "$url" ;;
    classpath) test_cp ;;
    *) log "unknown step '$step'; see the usage at the top of $0"; exit 2 ;;
  esac
done
