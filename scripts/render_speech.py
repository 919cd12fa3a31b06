"""Render a small single-label speech set with espeak-ng: OUT/audio/*.flac + OUT/manifest.csv.

    python scripts/render_speech.py OUT TASK N [--classes K] [--seed 0] [--format flac|wav] [--workers 2]

TASK `speaker`: the classes are K espeak-ng voice variants speaking English (en+m1 ... en+f4);
TASK `language`: the classes are K espeak-ng languages (en, de, fr, es, it, pt, nl, pl), each clip
spoken by a voice variant drawn per clip, so a class is a language and not a voice.

N is the number of clips per class. Sentence j (0 <= j < N) is spoken once by every class: a
pseudo-sentence of 3-12 words drawn from a parallel word list (the same concepts in every language,
bundled below) with a number in half of them, which espeak-ng reads in the clip's language. The
manifest's group is the sentence id, so a group-aware split keeps a sentence (and its translations) on
one side. Each clip gets its own pitch and speed jitter, 0.05-0.6 s of silence on both sides, coloured
noise at a random SNR and a random gain; clips are 1.5-6 s long. OUT/manifest.csv has path,label,group;
OUT/clips.csv the render settings of every clip (voice, pitch, speed, SNR, gain, duration, text);
OUT/dataset.json the request, classes, counts and the espeak-ng version. Same arguments give the same
bytes; a complete OUT for the same request is left as it is.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

TASKS = ("speaker", "language")
SPEAKERS = ("en+m1", "en+m2", "en+m3", "en+m4", "en+m5", "en+m6", "en+f1", "en+f2", "en+f3", "en+f4",
            "en+m7", "en+f5")
LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
# One concept per row, the same word in every language of LANGUAGES (in that order).
LEXICON = """
house water sun moon tree dog cat bread city friend
Haus Wasser Sonne Mond Baum Hund Katze Brot Stadt Freund
maison eau soleil lune arbre chien chat pain ville ami
casa agua sol luna árbol perro gato pan ciudad amigo
casa acqua sole luna albero cane gatto pane città amico
casa água sol lua árvore cão gato pão cidade amigo
huis water zon maan boom hond kat brood stad vriend
dom woda słońce księżyc drzewo pies kot chleb miasto przyjaciel
|
book school car window garden mountain river night morning music
Buch Schule Auto Fenster Garten Berg Fluss Nacht Morgen Musik
livre école voiture fenêtre jardin montagne rivière nuit matin musique
libro escuela coche ventana jardín montaña río noche mañana música
libro scuola macchina finestra giardino montagna fiume notte mattina musica
livro escola carro janela jardim montanha rio noite manhã música
boek school auto raam tuin berg rivier nacht ochtend muziek
książka szkoła samochód okno ogród góra rzeka noc rano muzyka
|
table door street flower sea sky bird horse apple milk
Tisch Tür Straße Blume Meer Himmel Vogel Pferd Apfel Milch
table porte rue fleur mer ciel oiseau cheval pomme lait
mesa puerta calle flor mar cielo pájaro caballo manzana leche
tavolo porta strada fiore mare cielo uccello cavallo mela latte
mesa porta rua flor mar céu pássaro cavalo maçã leite
tafel deur straat bloem zee lucht vogel paard appel melk
stół drzwi ulica kwiat morze niebo ptak koń jabłko mleko
|
big small red green old new and with today very
groß klein rot grün alt neu und mit heute sehr
grand petit rouge vert vieux nouveau et avec aujourd'hui très
grande pequeño rojo verde viejo nuevo y con hoy muy
grande piccolo rosso verde vecchio nuovo e con oggi molto
grande pequeno vermelho verde velho novo e com hoje muito
groot klein rood groen oud nieuw en met vandaag heel
duży mały czerwony zielony stary nowy i z dzisiaj bardzo
"""
SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 1.5, 6.0
SNR_DB = (10.0, 30.0)
LEVEL_DBFS = (-32.0, -16.0)
PAD_SECONDS = (0.05, 0.6)


def lexicon() -> dict[str, list[str]]:
    """Language -> its words, concept i at position i in every language."""
    words: dict[str, list[str]] = {language: [] for language in LANGUAGES}
    for block in LEXICON.strip().split("|"):
        rows = [line.split() for line in block.strip().splitlines()]
        if len(rows) != len(LANGUAGES) or len({len(r) for r in rows}) != 1:
            raise ValueError("LEXICON: every block needs one row per language, all of the same length")
        for language, row in zip(LANGUAGES, rows):
            words[language] += row
    return words


@dataclass(frozen=True)
class Sentence:
    """Concept ids and an optional number: one text per language."""

    index: int
    concepts: tuple[int, ...]
    number: int | None
    number_at: int

    def text(self, words: list[str]) -> str:
        tokens = [words[c] for c in self.concepts]
        if self.number is not None:
            tokens.insert(self.number_at, str(self.number))
        return " ".join(tokens)


def make_sentence(seed: int, index: int, n_concepts: int) -> Sentence:
    rng = np.random.default_rng([seed, 1, index])
    length = int(rng.integers(3, 13))
    concepts = tuple(int(c) for c in rng.integers(0, n_concepts, length))
    number = int(rng.integers(2, 100)) if rng.random() < 0.5 else None
    return Sentence(index, concepts, number, int(rng.integers(0, length + 1)))


@dataclass(frozen=True)
class ClipPlan:
    """Everything that defines one clip (the draws come from its own seeded generator)."""

    path: str
    label: str
    group: str
    voice: str
    language: str
    text: str
    class_index: int
    sentence: int


def plan_clips(task: str, n: int, n_classes: int, seed: int, audio_format: str) -> list[ClipPlan]:
    """N clips per class; sentence j is spoken by every class; ordered by sentence, then class."""
    classes = class_names(task, n_classes)
    words = lexicon()
    plans = []
    for j in range(n):
        sentence = make_sentence(seed, j, len(words["en"]))
        for c, name in enumerate(classes):
            language = "en" if task == "speaker" else name
            slug = name.replace("+", "-")
            plans.append(ClipPlan(path=f"audio/s{j:04d}_{slug}.{audio_format}", label=name, group=f"s{j:04d}",
                                  voice=name if task == "speaker" else language, language=language,
                                  text=sentence.text(words[language]), class_index=c, sentence=j))
    return plans


def class_names(task: str, n_classes: int) -> tuple[str, ...]:
    pool = SPEAKERS if task == "speaker" else LANGUAGES
    if not 2 <= n_classes <= len(pool):
        raise SystemExit(f"render_speech: --classes must be 2..{len(pool)} for {task}, got {n_classes}")
    return pool[:n_classes]


# ---------- one clip ----------

def espeak(text: str, voice: str, pitch: int, speed: int, tmp: Path) -> tuple[np.ndarray, int]:
    path = tmp / "speech.wav"
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), "--", text]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(f"espeak-ng -v {voice} failed: {result.stderr.strip()[:300]}")
    audio, rate = sf.read(path, dtype="float32")
    return audio, rate


def trim_silence(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """espeak-ng's own leading and trailing silence, removed so the padding below is what the clip has."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]: loud[-1] + 1] if len(loud) else audio


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White noise through a random one-pole low-pass: from white (pole 0) to nearly brown (0.95)."""
    from scipy.signal import lfilter

    pole = float(rng.uniform(0.0, 0.95))
    return lfilter([1.0], [1.0, -pole], rng.standard_normal(n)).astype(np.float32)


def render_clip(plan: ClipPlan, seed: int, tmp: Path) -> tuple[np.ndarray, dict]:
    """The clip's audio at SAMPLE_RATE and its render settings."""
    import soxr

    rng = np.random.default_rng([seed, 2, plan.sentence, plan.class_index])
    voice = plan.voice if "+" in plan.voice else f"{plan.voice}+{VARIANTS[int(rng.integers(len(VARIANTS)))]}"
    pitch, speed = 50 + int(rng.integers(-10, 11)), int(rng.integers(145, 196))
    speech, rate = espeak(plan.text, voice, pitch, speed, tmp)
    speech = trim_silence(soxr.resample(speech, rate, SAMPLE_RATE).astype(np.float32))
    cut = len(speech) > int(MAX_SECONDS * SAMPLE_RATE)
    speech = speech[: int(MAX_SECONDS * SAMPLE_RATE)]
    room = int(MAX_SECONDS * SAMPLE_RATE) - len(speech)  # padding never makes a clip longer than the maximum
    before, after = (min(int(rng.uniform(*PAD_SECONDS) * SAMPLE_RATE), room // 2) for _ in range(2))
    after = max(after, int(MIN_SECONDS * SAMPLE_RATE) - before - len(speech))
    clean = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
    snr = float(rng.uniform(*SNR_DB))
    noise = coloured_noise(rng, len(clean))
    speech_power = float(np.mean(np.square(speech, dtype=np.float64)))
    noise *= np.sqrt(speech_power / 10 ** (snr / 10) / float(np.mean(np.square(noise, dtype=np.float64))))
    mix = clean + noise
    level = float(rng.uniform(*LEVEL_DBFS))
    gain = min(10 ** (level / 20) / float(np.sqrt(np.mean(np.square(mix, dtype=np.float64)))),
               0.99 / float(np.abs(mix).max()))
    settings = {"voice": voice, "pitch": pitch, "speed": speed, "snr_db": round(snr, 2),
                "gain_db": round(20 * np.log10(gain), 2), "seconds": round(len(mix) / SAMPLE_RATE, 3), "cut": cut}
    return (mix * gain).astype(np.float32), settings


# ---------- workers ----------

SETTINGS: dict = {}


def _init_worker(settings: dict) -> None:
    SETTINGS.update(settings)


def render_batch(plans: list[ClipPlan]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="render_speech_") as tmp:
        for plan in plans:
            audio, settings = render_clip(plan, SETTINGS["seed"], Path(tmp))
            final = Path(SETTINGS["out"]) / plan.path
            partial = final.with_name(f".{final.name}.partial")
            sf.write(partial, audio, SAMPLE_RATE, format=final.suffix[1:].upper(), subtype="PCM_16")
            os.replace(partial, final)
            rows.append({**asdict(plan), **settings})
    return rows


# ---------- manifest, completeness, summary ----------

MANIFEST_COLUMNS = ("path", "label", "group")
CLIPS_COLUMNS = ("path", "label", "group", "voice", "pitch", "speed", "snr_db", "gain_db", "seconds", "cut",
                "text")


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def is_complete(out: Path, request: dict) -> bool:
    """dataset.json records the same request and every file the manifest lists exists."""
    try:
        recorded = json.loads((out / "dataset.json").read_text())["request"]
        with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError, KeyError, csv.Error):
        return False
    expected = request["n"] * request["classes"]
    return recorded == request and len(rows) == expected and all((out / r["path"]).is_file() for r in rows)


def summarise(rows: list[dict], classes: tuple[str, ...]) -> dict:
    per_class = Counter(r["label"] for r in rows)
    seconds = sorted(r["seconds"] for r in rows)
    snrs = [r["snr_db"] for r in rows]
    return {
        "clips": len(rows),
        "clips_per_class": {c: per_class.get(c, 0) for c in classes},
        "groups": len({r["group"] for r in rows}),
        "seconds": {"min": seconds[0], "median": seconds[len(seconds) // 2], "max": seconds[-1],
                    "total": round(sum(seconds), 1)},
        "snr_db": {"min": min(snrs), "max": max(snrs)},
        "clips_cut_at_max_seconds": sum(bool(r["cut"]) for r in rows),
    }


def espeak_version() -> str:
    return subprocess.run(["espeak-ng", "--version"], check=False, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("n", type=int, help="clips per class (= sentences)")
    parser.add_argument("--classes", type=int, default=None,
                        help=f"speakers (default 10, at most {len(SPEAKERS)}) or languages (default and most "
                             f"{len(LANGUAGES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["flac", "wav"], default="flac")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error("N must be positive")
    n_classes = args.classes or (10 if args.task == "speaker" else len(LANGUAGES))
    classes = class_names(args.task, n_classes)
    request = {"task": args.task, "n": args.n, "classes": n_classes, "seed": args.seed, "format": args.format}
    out = args.out.resolve()
    if is_complete(out, request):
        print(f"{out}/manifest.csv is complete ({args.n} clips x {n_classes} classes); nothing to do")
        return 0
    if shutil.which("espeak-ng") is None:
        sys.exit("render_speech: espeak-ng not found; install it (apt-get install espeak-ng) or run "
                 "scripts/make_speech_data.sh, which does")

    for stale in (out / "manifest.csv", out / "dataset.json", out / "clips.csv"):  # never complete when cut short
        stale.unlink(missing_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    plans = plan_clips(args.task, args.n, n_classes, args.seed, args.format)
    batches = [plans[i: i + 16] for i in range(0, len(plans), 16)]
    started, rows = time.time(), []
    print(f"rendering {len(plans)} clips ({args.task}: {n_classes} classes x {args.n}) with {args.workers} "
          f"workers into {out}", flush=True)
    settings = {"seed": args.seed, "out": str(out)}
    try:
        with multiprocessing.get_context("fork").Pool(args.workers, _init_worker, (settings,)) as pool:
            for done in pool.imap(render_batch, batches):
                rows.extend(done)
    except RuntimeError as exc:  # espeak-ng failed: say which voice, without a worker traceback
        sys.exit(f"render_speech: {exc}")
    elapsed = time.time() - started

    keep = {Path(p.path).name for p in plans}
    for path in (out / "audio").iterdir():
        if path.name not in keep:
            path.unlink()
    summary = summarise(rows, classes)
    record = {"request": request, "classes": list(classes), "sample_rate": SAMPLE_RATE, "summary": summary,
              "versions": {"espeak-ng": espeak_version(), "numpy": np.__version__}}  # no time: same bytes
    write_csv(out / "clips.csv", rows, CLIPS_COLUMNS)
    (out / "dataset.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    write_csv(out / "manifest.csv", rows, MANIFEST_COLUMNS)
    s = summary["seconds"]
    print(f"{len(rows)} clips, {summary['groups']} groups (sentences), {s['min']}-{s['max']} s "
          f"(median {s['median']}, {s['total']} s in all), rendered in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
