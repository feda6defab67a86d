#!/usr/bin/env bash
# A new user's first hour, scripted (issue 20): every README command with realistic and odd-but-legitimate inputs,
# on the toy world and the shipped toy base, in a unicode folder, under umask 022. A tour, not a test: it prints one
# line per command and a summary, and exits 1 if any command
#   - printed a Python traceback,
#   - ended other than expected (each command is marked ok = exit 0, or refuse = exit 2),
#   - was refused in more than one line (stderr, progress bars aside, must be exactly one `error: ...` line),
#   - printed library warnings (lines with "warn" on stderr),
# or if any file or folder it left is not group-readable (owner-only: another user's A1111 / ComfyUI cannot read it).
#
#   bench/first_hour.sh [WORK_DIR]      (default: a new temporary folder; every command's output is kept in WORK/log)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
TUNELAB=${TUNELAB:-$here/.venv/bin/tunelab}
PYTHON=${PYTHON:-$here/.venv/bin/python}
BASE=$here/src/tunelab/toy/base
WORK=${1:-$(mktemp -d -t first-hour.XXXXXX)}
umask 022
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK/log" && cd "$WORK" || exit 1
chmod 755 "$WORK"  # mktemp makes it 0700; everything below it is the tool's
D="data ü"  # the project folder: a unicode name with a space
mkdir -p "$D"

n=0; passed=0; tracebacks=0; unexpected=0; multiline=0; noisy=0; problems=()
started=$(date +%s)

# run EXPECT ARGS... : run `tunelab ARGS...` in $D, EXPECT = ok (exit 0) or refuse (exit 2, one `error:` line)
run() {
    local expect=$1; shift
    n=$((n + 1))
    local out="$WORK/log/$(printf %03d $n).out" err="$WORK/log/$(printf %03d $n).err" t0=$(date +%s.%N)
    (cd "$WORK/$D" && "$TUNELAB" "$@" >"$out" 2>"$err" </dev/null)
    local rc=$? t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    # stderr without progress bars (tqdm lines carry "%|") and blank lines
    local lines
    lines=$(tr '\r' '\n' <"$err" | grep -v -E '%\||^[[:space:]]*$' || true)
    local verdict=ok why=""
    if grep -q "Traceback (most recent call last)" "$out" "$err"; then
        verdict=BAD; why="traceback"; tracebacks=$((tracebacks + 1))
    elif [ "$expect" = ok ] && [ $rc -ne 0 ]; then
        verdict=BAD; why="exit $rc, expected 0"; unexpected=$((unexpected + 1))
    elif [ "$expect" = refuse ] && [ $rc -ne 2 ]; then
        verdict=BAD; why="exit $rc, expected a refusal (2)"; unexpected=$((unexpected + 1))
    elif [ "$expect" = refuse ] && { [ "$(printf '%s\n' "$lines" | grep -c .)" -ne 1 ] || [[ "$lines" != error:* ]]; }; then
        verdict=BAD; why="refusal not one error line"; multiline=$((multiline + 1))
    elif printf '%s\n' "$lines" | grep -qi "warn"; then
        verdict=BAD; why="library warnings on stderr"; noisy=$((noisy + 1))
    fi
    [ $verdict = ok ] && passed=$((passed + 1))
    local shown
    shown=$(if [ "$expect" = refuse ]; then printf '%s' "$lines" | head -1; else tail -1 "$out"; fi)
    printf '%3d %-4s %-6s rc=%d %6ss  tunelab %s\n      → %s\n' "$n" "$verdict" "$expect" $rc "$t" "$*" \
        "$(printf '%s' "$shown" | cut -c1-150)"
    [ $verdict = ok ] || problems+=("#$n tunelab $* : $why (see $out / $err)")
}

# --- files a user writes -----------------------------------------------------------------------------------------
cat >"$D/run.toml" <<EOF
[model]
path = "$BASE"
[data]
sources = [{ type = "folder", path = "images ü" }]
buckets = { resolution = 32, step = 8, min_side = 16, max_side = 64 }
cache = { latents = true, text_embeddings = true }
captions = { keep_tokens = 1 }
[train]
output_dir = "runs/ü run"
max_steps = 8
batch_size = 8
[unet]
learning_rate = 1e-4
[checkpoint]
every_n_steps = 4
[validation]
held_out = false
every_n_steps = 0
folder = "base world"
folder_size = 32
bands = 2
[logging]
progress_bar = true
EOF
sed -e 's/^output_dir = .*/output_dir = "runs\/te-on"/' -e 's/^max_steps = 8/max_steps = 4/' \
    -e 's/^every_n_steps = 4/every_n_steps = 2\nformat = "single-file"/' "$D/run.toml" >"$D/te-on.toml"
printf '[text_encoder]\nmode = "on"\nlearning_rate = 1e-5\n' >>"$D/te-on.toml"
sed -i 's/text_embeddings = true/text_embeddings = false/' "$D/te-on.toml"  # refused when text encoders train
sed -i 's/^max_steps = 4/max_steps = 4\nema_decay = 0.9/' "$D/te-on.toml"
sed -e 's/^output_dir = .*/output_dir = "runs\/fp16"/' -e 's/^batch_size = 8/batch_size = 8\nmixed_precision = "fp16"/' \
    "$D/run.toml" >"$D/fp16.toml"
printf '[model]\npath = "%s"\n[data]\nsource = [{ type = "folder", path = "images ü" }]\n[train]\nmax_steps = 5\n' "$BASE" >"$D/typo.toml"
CKPT="runs/ü run/checkpoints/step-000008"
cat >"$D/grid.toml" <<EOF
prompt = "1girl, kiko, red circle"
negative_prompt = "lowres"
steps = 6
width = 32
height = 32
[x]
axis = "checkpoint"
values = ["$BASE", "$CKPT", "merged.safetensors"]
[y]
axis = "prompt_sr"
values = ["red circle", "blue square", "$(printf 'zorb, %.0s' {1..120})purple star", ""]
[z]
axis = "seed"
values = [1, 4294967295]
EOF
sed 's/^values = \["red circle"/values = ["green hexagon"/' "$D/grid.toml" >"$D/grid-bad-sr.toml"
sed "s|\"merged.safetensors\"|\"nothing-here.safetensors\"|" "$D/grid.toml" >"$D/grid-missing.toml"
cat >"$D/sweep.toml" <<EOF
base = "run.toml"
output_dir = "runs/sweep"
[[variants]]
name = "unet-only"
set = { "train.max_steps" = 2, "checkpoint.every_n_steps" = 0 }
[[variants]]
name = "te-on"
set = { "train.max_steps" = 2, "checkpoint.every_n_steps" = 0, "text_encoder.mode" = "on", "data.cache.text_embeddings" = false }
[grid]
prompts = ["1girl, kiko", ""]
seeds = [0]
steps = 4
EOF
sed 's/^name = "te-on"/name = "te-on ü"/' "$D/sweep.toml" >"$D/sweep-unicode.toml"

# --- the tour ------------------------------------------------------------------------------------------------------
echo "first hour: $WORK (umask $(umask))"
run ok      --version
run ok      --help
run refuse  sampel "$BASE"
run refuse  info
run ok      toy dataset --out "images ü" --world finetune --count 48
run ok      toy dataset --out "base world" --world base --count 16 --seed 3
run refuse  toy dataset --out x --world nowhere
printf 'not an image' >"$D/images ü/broken.png"; : >"$D/images ü/empty ü.jpg"; printf 'orphan' >"$D/images ü/orphan.txt"
run ok      prepare run.toml
run ok      prepare run.toml --quiet
run ok      prepare run.toml --verify
run refuse  prepare missing.toml
run refuse  prepare typo.toml
run refuse  train typo.toml
run ok      captions run.toml --preview 3
run ok      captions run.toml --preview 0
run ok      captions te-on.toml --preview 1 --epoch 2
run ok      captions run.toml --split validation
run refuse  captions run.toml --preview -1
run ok      cache run.toml
run ok      cache run.toml --verify
run ok      info "$BASE"
run refuse  info "images ü"
run refuse  info nothing.safetensors
run ok      train run.toml --dry-run
run ok      train run.toml
run refuse  train run.toml
run ok      train run.toml --resume latest
run refuse  train run.toml --resume latest --overwrite
run refuse  train fp16.toml
run ok      train te-on.toml
run ok      train te-on.toml --overwrite
run ok      info "$CKPT"
run ok      info "runs/te-on/checkpoints/step-000004"
run refuse  info "runs/ü run"
run ok      convert "$BASE" base.safetensors --to single-file
run ok      convert base.safetensors "base diffusers" --to diffusers
run ok      convert "$CKPT" step8-fp16.safetensors --to single-file --dtype fp16
run refuse  convert base.safetensors base.ckpt --to single-file
run refuse  convert base.safetensors base.safetensors --to single-file
run refuse  convert base.safetensors out --to onnx
run ok      merge "$BASE" "$CKPT" --alpha 0.3 --out merged.safetensors
run ok      merge base.safetensors merged.safetensors --unet-alpha 0.7 --vae-alpha 0 --out "merged ü"
run refuse  merge base.safetensors merged.safetensors --out base.safetensors
run refuse  merge base.safetensors merged.safetensors --dtype fp8 --out x.safetensors
run ok      sample "$BASE" --prompt "red circle" --width 32 --height 32 --steps 6 --out "samples/base"
run ok      sample "$CKPT" --prompt "1girl, (kiko:1.3), [red circle]" --count 4 --sampler "DPM++ 2M Karras" --width 32 --height 32 --steps 6 --out samples/step
run ok      sample "$BASE" --width 32 --height 32 --steps 4 --out samples/unconditional
run ok      sample merged.safetensors --prompt "red circle BREAK blue square" --prompt "猫, ü, ☃" --width 32 --height 48 --steps 4 --out samples/break
run ok      sample "$BASE" --prompt "$(printf 'zorb, purple star, %.0s' {1..60})" --width 32 --height 32 --steps 4 --out samples/long
run ok      sample "$BASE" --prompt "" --count 100 --batch-size 100 --width 32 --height 32 --steps 2 --out samples/batch
run ok      sample "$BASE" --prompt "" --empty-as-zeros --seed 4294967294 --count 2 --width 32 --height 32 --steps 4 --out samples/zeros
for sampler in Euler DDIM "DPM++ 2M" "DPM++ 2M SDE Karras" UniPC PLMS Heun; do
    run ok  sample "$BASE" --prompt "green hexagon" --sampler "$sampler" --width 32 --height 32 --steps 4 --out "samples/$sampler"
done
run refuse  sample "$BASE" --width 30
run refuse  sample "$BASE" --seed 4294967295 --count 2
run refuse  sample "$BASE" --sampler "Euler z"
run refuse  sample "$BASE" --steps 0
run refuse  sample "$BASE" --clip-skip 99 --width 32 --height 32
run refuse  sample "runs/ü run" --width 32 --height 32
run ok      grid grid.toml
run refuse  grid grid-bad-sr.toml
run refuse  grid grid-missing.toml
run ok      validate run.toml --checkpoint "$CKPT" --checkpoint "runs/te-on/checkpoints/step-000004"
run refuse  validate run.toml --checkpoint nothing-here
run ok      report "runs/ü run"
run ok      report grid
run refuse  report nothing-here
run ok      toy score base "$CKPT" --samples 2 --out scores/scoreboard.json
run ok      sweep sweep.toml --dry-run
run ok      sweep sweep.toml --quiet
run ok      sweep sweep.toml --quiet
run refuse  sweep sweep-unicode.toml

# --- what the tour left on disk --------------------------------------------------------------------------------------
owner_only=$(find "$WORK/$D" \( -type f -o -type d \) ! -perm -g=r -printf '%m %P\n')
owner_count=$(printf '%s' "$owner_only" | grep -c . || true)
files=$(find "$WORK/$D" -type f | wc -l)
elapsed=$(( $(date +%s) - started ))
echo
echo "summary: $n commands in ${elapsed} s: $passed as expected; tracebacks $tracebacks, unexpected exit codes" \
     "$unexpected, refusals over one line $multiline, warnings $noisy; owner-only paths $owner_count of $files files" \
     "(+ folders) written"
for p in "${problems[@]}"; do echo "  problem: $p"; done
[ "$owner_count" -eq 0 ] || printf '  owner-only: %s\n' "$owner_only" | head -20
[ $passed -eq $n ] && [ "$owner_count" -eq 0 ]
