"""Render a multi-label audio set with an exact manifest: OUT/audio/*.flac + OUT/manifest.csv.

    python scripts/render_bench.py OUT N [--preset bench|demo] [--duration 10] [--synth auto|fluidsynth|numpy]

Each clip is an excerpt of a score from music21's corpus (Bach chorales first, then Monteverdi and
Palestrina) whose parts are played by General MIDI instruments (fluidsynth + FluidR3_GM), optionally
with a drum kit on channel 10 and espeak-ng speech. The manifest has columns path,label,group: path
relative to OUT, label = the ';'-separated set of classes that sound in the clip, group = the source
score, so a group-aware split keeps a score on one side. Output is deterministic for a given N, seed
and set of options. `--synth numpy` (or `auto` without fluidsynth) renders the same kind of
arrangements with a numpy synthesiser instead, announced loudly and recorded in OUT/dataset.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_arrange import (
    PRESETS,
    SPEECH,
    ClipPlan,
    Voice,
    arrange_clip,
    assign_scores,
    label_string,
    order_pool,
    plan_clips,
    score_group,
    voice_sounds,
)

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
MIN_FRACTION = 0.25  # a class is a label only if it sounds for at least this share of the clip
SPEECH_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
SPEECH_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
WORDS = (
    "the", "a", "river", "morning", "city", "light", "station", "window", "garden", "table", "music",
    "evening", "letter", "number", "quickly", "slowly", "always", "never", "under", "over", "between",
    "after", "before", "inside", "outside", "green", "silver", "yellow", "ancient", "modern", "small",
    "large", "warm", "cold", "bright", "quiet", "open", "closed", "walk", "speak", "listen", "write",
    "carry", "follow", "remember", "answer", "travel", "build", "count", "measure", "paint", "gather",
    "bring", "leave", "mountain", "harbour", "village", "market", "teacher", "doctor", "farmer", "painter",
    "sailor", "engine", "signal", "bridge", "paper", "story", "voice", "minute", "second", "hour",
    "winter", "summer", "autumn", "spring", "north", "south", "east", "west",
)


# ---------- pure signal helpers ----------

def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to exactly n samples."""
    if len(audio) >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - len(audio), dtype=audio.dtype)])


def loudness_normalise(audio: np.ndarray, target_dbfs: float, peak: float = 0.95) -> np.ndarray:
    """Scale to the target RMS level, then lower it if that would push the peak above `peak`."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms == 0:
        return audio
    gain = 10 ** (target_dbfs / 20) / rms
    gain = min(gain, peak / float(np.abs(audio).max()))
    return (audio * gain).astype(np.float32)


def active_seconds(audio: np.ndarray, sr: int, frame: float = 0.02, rel_threshold: float = 0.05) -> float:
    """Seconds of 20 ms frames whose RMS is above rel_threshold of the loudest frame."""
    hop = int(frame * sr)
    n = len(audio) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(np.square(audio[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    if rms.max() == 0:
        return 0.0
    return float((rms > rel_threshold * rms.max()).sum() * frame)


# ---------- MIDI + fluidsynth ----------

def build_midi(voices: list[Voice]):
    """A type-0 MIDI file at 60 bpm with 1000 ticks per beat, so one tick is one millisecond."""
    import mido

    midi = mido.MidiFile(type=0, ticks_per_beat=1000)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=1_000_000, time=0))
    events = []  # (tick, order, message): note-offs sort before note-ons at the same tick
    for voice in voices:
        if voice.program >= 0:
            program = mido.Message("program_change", channel=voice.channel, program=voice.program)
            events.append((0, 0, program))
        events.append((0, 0, mido.Message("control_change", channel=voice.channel, control=7, value=100)))
        for start, end, pitch, velocity in voice.notes:
            on, off = round(start * 1000), max(round(end * 1000), round(start * 1000) + 1)
            events.append((on, 2, mido.Message("note_on", channel=voice.channel, note=int(pitch),
                                               velocity=int(velocity))))
            events.append((off, 1, mido.Message("note_off", channel=voice.channel, note=int(pitch))))
    events.sort(key=lambda e: (e[0], e[1]))
    tick = 0
    for at, _, message in events:
        track.append(message.copy(time=at - tick))
        tick = at
    return midi


def render_midi(midi_path: Path, wav_path: Path, soundfont: str, sr: int) -> np.ndarray:
    """fluidsynth's file renderer (float output, no clipping) -> mono float32."""
    cmd = ["fluidsynth", "-ni", "-q", "-r", str(sr), "-g", "0.5",
           "-o", "synth.dynamic-sample-loading=1", "-o", "synth.cpu-cores=1",
           "-o", "audio.file.format=float", "-F", str(wav_path), soundfont, str(midi_path)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0 or not wav_path.exists():
        raise RuntimeError(f"fluidsynth failed on {midi_path}: {result.stderr.strip()[:500]}")
    audio, file_sr = sf.read(wav_path, dtype="float32", always_2d=True)
    if file_sr != sr:
        raise RuntimeError(f"fluidsynth wrote {file_sr} Hz instead of {sr} Hz")
    return audio.mean(axis=1)


def speak(rng: np.random.Generator, sr: int, seconds: float, workdir: Path) -> np.ndarray:
    """espeak-ng sentences of random words, joined with short pauses until about `seconds` long."""
    import soxr

    pieces, total = [], 0.0
    voice = f"{SPEECH_VOICES[int(rng.integers(len(SPEECH_VOICES)))]}+" \
            f"{SPEECH_VARIANTS[int(rng.integers(len(SPEECH_VARIANTS)))]}"
    speed, pitch = int(rng.integers(130, 190)), int(rng.integers(25, 75))
    for attempt in range(4):
        if total >= seconds:
            break
        text = " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), int(rng.integers(6, 12))))
        path = workdir / f"speech{attempt}.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"espeak-ng failed: {result.stderr.strip()[:300]}")
        audio, file_sr = sf.read(path, dtype="float32")
        audio = soxr.resample(audio, file_sr, sr) if file_sr != sr else audio
        pieces += [audio, np.zeros(int(rng.uniform(0.2, 0.5) * sr), dtype=np.float32)]
        total += len(audio) / sr
    return np.concatenate(pieces)


def place(rng: np.random.Generator, signal: np.ndarray, n: int) -> np.ndarray:
    """The signal at a random offset inside n samples (a random n-sample piece if it is longer)."""
    if len(signal) >= n:
        start = int(rng.integers(0, len(signal) - n + 1))
        return signal[start: start + n]
    out = np.zeros(n, dtype=np.float32)
    at = int(rng.integers(0, n - len(signal) + 1))
    out[at: at + len(signal)] = signal
    return out


# ---------- scores ----------

FORMATS = {".mxl": 0, ".xml": 1, ".krn": 2}  # preference when one score exists in several formats


def corpus_tiers() -> list[list[str]]:
    """music21 corpus files in priority tiers: Bach (chorales), then Monteverdi and Palestrina.

    Roman-numeral analyses (.rntxt) are not scores; a score stored in several formats is taken once."""
    from music21 import corpus

    def scores(composer: str) -> list[str]:
        by_id: dict[str, str] = {}
        for path in sorted(map(str, corpus.getComposer(composer)), key=lambda p: (FORMATS.get(p[-4:], 9), p)):
            if path[-4:] in FORMATS:
                by_id.setdefault(score_id(path), path)
        return sorted(by_id.values())

    return [scores("bach"), scores("monteverdi") + scores("palestrina")]


def score_id(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name.rsplit('.', 1)[0]}"


def load_corpus_score(path: str) -> list[np.ndarray]:
    """Parts of a corpus score as (onset, duration, pitch) rows; ties merged, grace notes skipped."""
    from music21 import converter

    score = converter.parse(path).stripTies()
    parts = []
    for part in score.parts:
        rows = [(float(n.offset), float(n.duration.quarterLength), p.midi)
                for n in part.flatten().notes if n.duration.quarterLength > 0
                for p in getattr(n, "pitches", ())]
        if rows:
            parts.append(np.array(rows, dtype=float))
    return parts


# ---------- one task = one score and its clips ----------

SETTINGS: dict = {}


def _init_worker(settings: dict) -> None:
    SETTINGS.update(settings)


def _load_parts(candidates: list[str]) -> tuple[str, list[np.ndarray]]:
    """The first candidate score that parses and has a part with notes (later ones are stand-ins)."""
    if SETTINGS["synth"] == "numpy":
        from bench_synth import synthetic_score

        name = candidates[0]
        return name, synthetic_score(np.random.default_rng([SETTINGS["seed"], int(name.split("/")[1]), 3]))
    errors = []
    for path in candidates:
        try:
            parts = load_corpus_score(path)
        except Exception as exc:  # noqa: BLE001 - music21 raises many types; one bad file must not stop all
            errors.append(f"{score_id(path)}: {exc}")
            continue
        if parts:
            if errors:
                print(f"WARNING using stand-in {score_id(path)}: {'; '.join(errors)}", file=sys.stderr, flush=True)
            return score_group(score_id(path)), parts
        errors.append(f"{score_id(path)}: no notes")
    raise RuntimeError("no usable score among candidates: " + "; ".join(errors))


def render_task(task: tuple[list[str], list[ClipPlan]]) -> list[dict]:
    candidates, plans = task
    group, parts = _load_parts(candidates)
    sr, duration = SETTINGS["sample_rate"], SETTINGS["duration"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="render_bench_") as tmp:
        for plan in plans:
            rows.append(render_clip(plan, parts, group, Path(tmp), sr, duration))
    return rows


def render_clip(plan: ClipPlan, parts: list[np.ndarray], group: str, tmp: Path, sr: int,
                duration: float) -> dict:
    """Arrange, render and write one clip; a new arrangement is drawn if nothing came out audible."""
    for attempt in range(3):
        rng = np.random.default_rng([SETTINGS["seed"], plan.index, 1, attempt])
        music, labels = mix_clip(rng, plan, parts, tmp, sr, duration)
        if labels and np.sqrt(np.mean(music ** 2)) >= 1e-5:
            break
    else:
        raise RuntimeError(f"{plan.clip_id}: nothing audible for classes {plan.classes} from {group}")
    audio = loudness_normalise(music, target_dbfs=float(rng.uniform(-22, -18)))
    rel = f"audio/{plan.clip_id}.{SETTINGS['format']}"
    final = Path(SETTINGS["out"]) / rel
    partial = final.with_name(f".{final.name}.partial")
    sf.write(partial, audio, sr, format=SETTINGS["format"].upper(), subtype="PCM_16")
    os.replace(partial, final)
    return {"index": plan.index, "path": rel, "label": label_string(labels, SETTINGS["classes"]),
            "group": group}


def mix_clip(rng: np.random.Generator, plan: ClipPlan, parts: list[np.ndarray], tmp: Path, sr: int,
             duration: float) -> tuple[np.ndarray, list[str]]:
    """The clip's mono mix and the classes that sound in it."""
    n = round(duration * sr)
    voices, _ = arrange_clip(rng, parts, plan.classes, duration, MIN_FRACTION)
    voices = [v for v in voices if voice_sounds(v, duration, MIN_FRACTION)]
    if SETTINGS["synth"] == "numpy":
        from bench_synth import render_voices

        music = render_voices(voices, sr, duration, rng)
    elif voices:
        build_midi(voices).save(tmp / "clip.mid")
        music = fit_length(render_midi(tmp / "clip.mid", tmp / "clip.wav", SETTINGS["soundfont"], sr), n)
    else:
        music = np.zeros(n, dtype=np.float32)
    labels = [v.name for v in voices]
    if SPEECH in plan.classes:
        try:
            speech = place(rng, speak(rng, sr, rng.uniform(0.5, 0.9) * duration, tmp), n)
        except (RuntimeError, OSError) as exc:  # speech is optional: the clip goes on without it
            print(f"WARNING {plan.clip_id}: speech left out: {exc}", file=sys.stderr, flush=True)
            return music, labels
        if active_seconds(speech, sr) >= MIN_FRACTION * duration:
            if labels:  # speech level relative to the music, within a few dB
                music_rms = np.sqrt(np.mean(music ** 2)) + 1e-9
                speech *= music_rms / (np.sqrt(np.mean(speech ** 2)) + 1e-9) * 10 ** (rng.uniform(-4, 4) / 20)
            music = music + speech
            labels.append(SPEECH)
    return music, labels


# ---------- manifest, completeness, summary ----------

def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def is_complete(out: Path, request: dict) -> bool:
    """The manifest and every file it lists exist, and dataset.json records the same request."""
    manifest, record = out / "manifest.csv", out / "dataset.json"
    if not manifest.is_file() or not record.is_file():
        return False
    try:
        recorded = json.loads(record.read_text()).get("request", {})
        rows = read_manifest(manifest)
    except (OSError, ValueError, csv.Error):
        return False
    wanted = {k: v for k, v in request.items() if not (k == "synth" and v == "auto")}
    if any(recorded.get(k) != v for k, v in wanted.items()):
        return False
    return len(rows) == request["n"] and all((out / r["path"]).is_file() for r in rows)


def write_manifest(path: Path, rows: list[dict]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def summarise(rows: list[dict], classes: tuple[str, ...]) -> dict:
    per_class = Counter(name for r in rows for name in r["label"].split(";"))
    per_count = Counter(len(r["label"].split(";")) for r in rows)
    per_group = Counter(r["group"] for r in rows)
    sources = Counter(g.split("/")[0] for g in per_group)
    sizes = sorted(per_group.values())
    return {
        "clips": len(rows),
        "clips_per_class": {c: per_class.get(c, 0) for c in classes},
        "clips_per_label_count": dict(sorted(per_count.items())),
        "groups": len(per_group),
        "groups_per_source": dict(sorted(sources.items())),
        "clips_per_group": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]},
    }


def print_summary(summary: dict, elapsed: float, out: Path, synth: str) -> None:
    n = summary["clips"]
    print(f"\n{n} clips in {out} ({synth}), {elapsed:.1f} s, {n / max(elapsed, 1e-9):.2f} clips/s")
    print("clips per class:")
    for name, count in summary["clips_per_class"].items():
        print(f"  {name:<10} {count:>6}")
    per_count = summary["clips_per_label_count"]
    print("clips per label count: " + ", ".join(f"{k}: {v}" for k, v in per_count.items()))
    print(f"groups (source scores): {summary['groups']} "
          f"({', '.join(f'{k}: {v}' for k, v in summary['groups_per_source'].items())}); "
          f"clips per group min/median/max: {'/'.join(str(v) for v in summary['clips_per_group'].values())}")


# ---------- main ----------

def choose_synth(requested: str) -> str:
    available = shutil.which("fluidsynth") is not None and Path(SOUNDFONT).is_file()
    try:
        import mido  # noqa: F401
        import music21  # noqa: F401
    except ImportError:
        available = False
    if requested == "fluidsynth" and not available:
        sys.exit("render_bench: fluidsynth, the FluidR3_GM soundfont, music21 and mido are needed; "
                 "run scripts/make_bench_data.sh, which installs them")
    if requested == "auto":
        requested = "fluidsynth" if available else "numpy"
    if requested == "numpy":
        print("=" * 78 + "\nNOTE: fluidsynth/music21 not available: rendering the NUMPY-SYNTHESISED fallback "
              "set\n(additive tones and noise drums, not sampled instruments)\n" + "=" * 78, flush=True)
    return requested


def build_tasks(n: int, pool: list[str], clips_per_score: int, plans: list[ClipPlan]) -> list:
    """One task per score; each carries stand-in scores (unused pool entries) in case it fails to parse."""
    positions = assign_scores(n, len(pool), clips_per_score)
    n_scores = max(positions) + 1
    spare = pool[n_scores:] or pool
    grouped: dict[int, list[ClipPlan]] = {}
    for plan, position in zip(plans, positions):
        grouped.setdefault(position, []).append(plan)
    return [([pool[p]] + [spare[(p * 3 + j) % len(spare)] for j in range(3)], grouped[p])
            for p in sorted(grouped)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--max-instruments", type=int, default=4)
    parser.add_argument("--clips-per-score", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["flac", "wav"], default="flac")
    parser.add_argument("--synth", choices=["auto", "fluidsynth", "numpy"], default="fluidsynth")
    parser.add_argument("--soundfont", default=SOUNDFONT)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check", action="store_true",
                        help="only say whether OUT is complete (exit 0) or not (1)")
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error("N must be positive")

    keys = ("preset", "n", "seed", "duration", "sample_rate", "max_instruments", "clips_per_score", "format",
            "synth")
    request = {k: getattr(args, k) for k in keys}
    out = args.out.resolve()
    if is_complete(out, request):
        print(f"{out}/manifest.csv is complete ({args.n} clips); nothing to do")
        return 0
    if args.check:
        return 1
    synth = choose_synth(args.synth)
    classes = PRESETS[args.preset]
    if synth == "numpy" and args.preset != "demo":
        sys.exit("render_bench: the numpy fallback synthesises the demo preset's classes only")
    if SPEECH in classes and shutil.which("espeak-ng") is None:
        print("NOTE: espeak-ng not found: the speech class is left out", flush=True)
        classes = tuple(c for c in classes if c != SPEECH)

    for stale in (out / "manifest.csv", out / "dataset.json"):  # an interrupted run never looks complete
        stale.unlink(missing_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    pool = order_pool(corpus_tiers(), args.seed) if synth == "fluidsynth" else \
        [f"synth/{i:04d}" for i in range(math.ceil(args.n / args.clips_per_score))]
    plans = plan_clips(args.n, classes, args.max_instruments, args.seed)
    tasks = build_tasks(args.n, pool, args.clips_per_score, plans)
    settings = {"synth": synth, "seed": args.seed, "sample_rate": args.sample_rate, "duration": args.duration,
                "soundfont": args.soundfont, "format": args.format, "out": str(out), "classes": classes}

    started, rows = time.time(), []
    print(f"rendering {args.n} clips of {args.duration:g} s from {len(tasks)} scores with {args.workers} "
          f"workers into {out}", flush=True)
    try:
        with multiprocessing.get_context("fork").Pool(args.workers, _init_worker, (settings,)) as workers:
            for done in workers.imap_unordered(render_task, tasks):
                before = len(rows)
                rows.extend(done)
                if len(rows) * 20 // args.n > before * 20 // args.n:
                    rate = len(rows) / (time.time() - started)
                    print(f"  {len(rows)}/{args.n} clips, {rate:.2f} clips/s", flush=True)
    except RuntimeError as exc:  # fluidsynth or a score failed: say which, without a worker traceback
        sys.exit(f"render_bench: {exc}")
    elapsed = time.time() - started
    rows.sort(key=lambda r: r["index"])

    keep = {Path(r["path"]).name for r in rows}
    for path in (out / "audio").glob("clip*.*"):
        if path.name not in keep:
            path.unlink()
    summary = summarise(rows, classes)
    record = {"request": request, "synth": synth, "classes": list(classes), "summary": summary,
              "seconds": round(elapsed, 1), "versions": _versions(synth)}
    (out / "dataset.json").write_text(json.dumps(record, indent=2) + "\n")
    write_manifest(out / "manifest.csv", rows)
    print_summary(summary, elapsed, out, synth)
    return 0


def _versions(synth: str) -> dict:
    versions = {"numpy": np.__version__}
    if synth == "fluidsynth":
        fs = subprocess.run(["fluidsynth", "--version"], check=False, capture_output=True, text=True).stdout
        versions.update(music21=metadata.version("music21"), mido=metadata.version("mido"),
                        fluidsynth=fs.split("\n")[0].strip())
    if shutil.which("espeak-ng"):
        versions["espeak-ng"] = subprocess.run(["espeak-ng", "--version"], check=False,
                                               capture_output=True, text=True).stdout.strip()
    return versions


if __name__ == "__main__":
    sys.exit(main())
