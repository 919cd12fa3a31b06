"""Every benchmark under scripts/bench/ runs end to end on tiny inputs, as a user starts it (its own process,
the command line its docstring gives), so that a change of an artifact's format or of an API cannot
silently break a benchmark. The figures are not checked, only that each script gets to its summary."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiotokens.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench"
RATE = 22050  # the default sample rate: the seed's librosa loop and the stage read the same samples


def bench(script: str, *args, cwd: Path, timeout: int = 300) -> str:
    """Run scripts/bench/<script> with `args`; its output, after asserting it exited cleanly."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": path}, check=False)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """Four 0.5 s tones and a manifest of them (path relative to it, first column)."""
    folder = tmp_path_factory.mktemp("bench_audio")
    t = np.arange(RATE // 2) / RATE
    for i in range(4):
        sf.write(folder / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32), RATE)
    (folder / "manifest.csv").write_text("path\n" + "".join(f"clip{i}.wav\n" for i in range(4)))
    return folder


def test_every_bench_script_has_a_smoke_test():
    scripts = {path.name for path in BENCH.glob("*.py") if not path.name.startswith("_")}
    tested = {name.removeprefix("test_").removesuffix("_bench") + ".py" for name in globals()
              if name.startswith("test_") and name.endswith("_bench")}
    assert scripts == tested


def test_spectrogram_bench(audio, tmp_path):
    out = bench("spectrogram.py", audio, 4, "--repeats", "1", "--workers", "1", cwd=tmp_path)
    assert "stage / bound (clips/s)" in out and "stage / seed" in out
    worst = float(out.split("largest |stage - seed|:")[1].split()[0])
    assert worst < 1e-4  # the stage's frames are the seed's, clip by clip
    out = bench("spectrogram.py", audio, 2, "--repeats", "1", "--workers", "1", "--flac48", "--skip-seed",
                cwd=tmp_path)
    assert "48000 Hz, 1 ch, FLAC PCM_24" in out and "stage / bound (clips/s)" in out


def test_shards_bench(audio, tmp_path):
    out = bench("shards.py", audio / "manifest.csv", 3, "--shards", "2", "--n-clusters", "4", cwd=tmp_path)
    assert "tokens.npy" in out and "frames identical to the one-process run: True" in out


def test_long_input_bench(tmp_path):
    out = bench("long_input.py", "--seconds", "2", "--rate", "16000", "--channels", "2", "--max-durations", "0,1",
                cwd=tmp_path)
    table = out.split("frames")[-1].split("\n")[1:]
    rows = [line.split() for line in table if line.strip()]
    assert [row[0] for row in rows] == ["0", "1"] and "failed" not in out
    assert int(rows[0][-1]) > int(rows[1][-1]) > 0  # max_duration = 1 s keeps fewer frames


def test_vocab_bench(tmp_path):
    out = bench("vocab.py", "--frames", "3000", "--ks", "4", "--niter", "2", cwd=tmp_path)
    assert "cluster" in out and "tokenize" in out and "k-means iterations run: ours 2, raw 2" in out


def test_train_bench(tmp_path):
    out = bench("train.py", "--tiny", "--steps", "1", "--warmup", "1", "--repeats", "1", "--batches", "4",
                "--positions", "8", "--classes", "3", "--workers", "0", cwd=tmp_path)
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["bert"], ["conformer"], ["cnn"])]
    assert {row[0] for row in rows} == {"bert", "conformer", "cnn"}  # every encoder that needs no local model
    assert "data path at batch 4" in out


def test_train_bench_recipe_shapes(tmp_path):
    """--recipe measures the defaults' model: its codebooks, pooling and batch size, read from the configuration."""
    config = load_config()
    out = bench("train.py", "--recipe", "--encoders", "bert", "--steps", "1", "--warmup", "1", "--repeats", "1",
                "--batches", "4", "--positions", "8", "--classes", "3", "--workers", "0", cwd=tmp_path)
    bands = config.cluster.bands if config.cluster.quantizer == "subband" else 1
    assert f"codebooks {[config.cluster.n_clusters] * bands}, {config.model.pooling} pooling" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["bert", "seed"], ["bert", "fp32"])]
    assert rows and all(int(row[4]) == config.train.batch_size for row in rows)


@pytest.mark.slow
def test_train_bench_compile(tmp_path):
    out = bench("train.py", "--tiny", "--encoders", "cnn", "--steps", "1", "--warmup", "1", "--repeats", "1",
                "--batches", "4", "--positions", "8", "--classes", "3", "--compile", cwd=tmp_path, timeout=900)
    assert "compiled / eager" in out


def test_predict_bench(tmp_path):
    out = bench("predict.py", "--files", "2", "--layers", "1", "--hidden", "32", "--classes", "3", "--clusters", "4",
                "--repeats", "1", cwd=tmp_path)
    assert "predict_cli end to end" in out and "files/s" in out


def test_api_bench(tmp_path):
    out = bench("api.py", "--files", "2", "--seconds", "0.3", "--layers", "1", "--hidden", "32", "--repeats", "1",
                cwd=tmp_path)
    assert "ratio API/CLI" in out and "onnxruntime" in out


def test_variable_length_bench(tmp_path):
    out = bench("variable_length.py", tmp_path / "work", "--max-frames", "30", "--clips", "8", cwd=tmp_path)
    assert out.count("clips_per_s") == 3


def test_ddp_bench(audio, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from _workdir import tokens_workdir
    finally:
        sys.path.remove(str(BENCH))
    settings = tokens_workdir(tmp_path / "work", sorted(audio.glob("*.wav")), "spectrogram.workers=1",
                              "cluster.n_clusters=4", "cluster.niter=2")
    config = tmp_path / "small.toml"
    config.write_text("[model]\nnum_layers = 1\nhidden_size = 16\nnum_heads = 2\nintermediate_size = 32\n"
                      '[train]\nbatch_size = 2\ndevice = "cpu"\nnum_workers = 0\n')
    out = bench("ddp.py", "--config", config, "--workdir", tmp_path / "work", "--nproc", "2", "--epochs", "1",
                "--rounds", "1", *(part for setting in settings for part in ("--set", setting)), cwd=tmp_path)
    assert "2 processes" in out and "1 process, 1 thread" in out


def test_onnx_frames_bench(tmp_path):
    out = bench("onnx_frames.py", "--layers", "1", "--hidden", "32", "--classes", "3", "--repeats", "1",
                "--kinds", "frame,subband", cwd=tmp_path)
    assert "frame" in out and "subband" in out


def test_tracking_bench(tmp_path):
    bench("tracking.py", tmp_path / "work", "--pairs", "1", "--epochs", "2", "--clips", "16", cwd=tmp_path)


def test_timeline_bench(tmp_path):
    out = bench("timeline.py", "--minutes", "0.2", "--rate", "16000", "--layers", "1", "--hidden", "32",
                "--classes", "3", "--clusters", "8", cwd=tmp_path)
    assert out.strip()
