"""scripts/sweep_tokenizers.sh: which runs share base's frames and which make their own (speech-model units and
any spec that sets a spectrogram key), over base's split; and, end to end with a tiny random wav2vec2, the
units row of the family table. The random model proves the plumbing, not what real speech-model units keep."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_codecs import save_tiny_codec

from audiotokens.tokens.codec import codec_record

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "scripts" / "sweep_tokenizers.sh"


def stub_command(tmp_path: Path, stub: str) -> Path:
    """`stub` as the `audiotokens` command in tmp_path/bin; returns that folder, to go first on PATH."""
    command = tmp_path / "bin" / "audiotokens"
    command.parent.mkdir(exist_ok=True)
    command.write_text(stub)
    command.chmod(0o755)
    return command.parent


def sweep(tmp_path: Path, stub: str, *specs: str, exit_code: int = 0, **env: str) -> subprocess.CompletedProcess:
    """The sweep over `specs` with `stub` as the `audiotokens` command; asserts it exited with `exit_code`."""
    folder = stub_command(tmp_path, stub)
    environment = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
                   "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(["bash", str(SWEEP), str(tmp_path / "config.toml"), str(tmp_path / "sweep"), *specs],
                          env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == exit_code, done.stdout[-3000:] + done.stderr[-3000:]
    return done


LOGGING_STUB = """#!/usr/bin/env bash
# logs every call; base's first `run --to spectrogram` leaves a split, as the split stage would
echo "$*" >> "$LOG"
if [[ " $* " == *" --to spectrogram "* ]] && [ ! -e "${LOG%/*}/sweep/base/processed/split.json" ]; then
  args="$*"; dir=${args##*--workdir }; dir=${dir%% *}
  mkdir -p "$dir/processed"
  echo '{"splits": {"train": ["a"]}}' > "$dir/processed/split.json"
  echo '{}' > "$dir/processed/split_report.json"
  echo '{"stage": "split"}' > "$dir/processed/split.meta.json"
fi
"""


def test_specs_that_set_spectrogram_keys_make_their_own_frames_over_bases_split(tmp_path):
    log = tmp_path / "calls.txt"
    codec_folder = tmp_path / "models" / "dac"
    save_tiny_codec("dac", codec_folder)
    sweep(tmp_path, LOGGING_STUB, "frame:n_clusters=4", "units:ssl_layer=3,n_clusters=4",
          "units:ssl_model=/models/hubert-base/,ssl_layer=6", f"codec:codec_model={codec_folder}",
          "frames:spectrogram.ssl_layer=2",
          LOG=str(log), SSL_MODEL="/models/wav2vec2", TOKEN_EMBEDDINGS="learned decoded", PYTHON=sys.executable)
    calls = log.read_text().splitlines()
    runs = {line.split("--workdir ")[1].split()[0].rsplit("/", 1)[1]: line for line in calls
            if line.startswith("run") and "--to evaluate" in line}
    frames_made = [line.split("--workdir ")[1].split()[0].rsplit("/", 1)[1] for line in calls
                   if "--from spectrogram --to spectrogram" in line]
    units = "units_ssl_layer=3_n_clusters=4_token_embedding=learned"
    hubert = "units_ssl_model=hubert-base_ssl_layer=6_token_embedding=learned"  # a path by its last part
    codec = "codec_codec_model=dac_token_embedding=learned"
    assert set(runs) == {f"{name}_token_embedding={embedding}" for embedding in ("learned", "decoded")
                         for name in ("frame_n_clusters=4", units.rsplit("_token", 1)[0],
                                      hubert.rsplit("_token", 1)[0], codec.rsplit("_token", 1)[0])} | {
        "frames_spectrogram.ssl_layer=2"}  # the frames control runs once, whatever the embeddings
    assert "--from cluster" in runs["frame_n_clusters=4_token_embedding=learned"]
    for setting in ("spectrogram.features=ssl", "cluster.quantizer=frame", "spectrogram.ssl_model=/models/wav2vec2",
                    "spectrogram.ssl_layer=3", "cluster.n_clusters=4"):
        assert f"--set {setting}" in runs[units]
    assert frames_made == [units, hubert, codec, "frames_spectrogram.ssl_layer=2"]  # once per spec
    assert "--from cluster" in runs[units] and "--from cluster" in runs[units.replace("learned", "decoded")]
    assert "--from train" in runs["frames_spectrogram.ssl_layer=2"]  # the frames control needs no vocabulary
    assert "--set spectrogram.ssl_model=/models/hubert-base/" in runs[hubert] and "wav2vec2" not in runs[hubert]
    record = codec_record(str(codec_folder), 0)  # a codec spec reads the codec's own rate and hop
    for setting in ("cluster.quantizer=codec", f"cluster.codec_model={codec_folder}", "spectrogram.features=codec",
                    f"spectrogram.sample_rate={record.sample_rate}", f"spectrogram.hop_length={record.hop_length}"):
        assert f"--set {setting}" in runs[codec]
    assert "--set spectrogram.ssl_layer=2" in runs["frames_spectrogram.ssl_layer=2"]

    sweep_dir = tmp_path / "sweep"
    base = sweep_dir / "base" / "processed"
    assert (sweep_dir / "frame_n_clusters=4_token_embedding=learned" / "processed").resolve() == base.resolve()
    for name in (units, hubert, codec, "frames_spectrogram.ssl_layer=2"):
        own = sweep_dir / name / "processed"
        assert not own.is_symlink() and own.is_dir()
        for file in ("split.json", "split_report.json", "split.meta.json"):  # base's split, the same clips
            assert (own / file).read_bytes() == (base / file).read_bytes()
        if "learned" in name:  # the other embedding reads the frames the first one made
            assert (sweep_dir / name.replace("learned", "decoded") / "processed").resolve() == own.resolve()
    assert calls[-1].startswith("compare") and calls[-1].count(str(sweep_dir)) == 1 + 9 + 1  # base, runs, --out

    # the sweep again over the same folder, base split anew meanwhile (a stage replaces its files whole)
    (base / "split.json").unlink()
    (base / "split.json").write_text('{"splits": {"train": ["b"]}}')
    sweep(tmp_path, LOGGING_STUB, "units:ssl_layer=3,n_clusters=4", LOG=str(log), SSL_MODEL="/models/wav2vec2",
          TOKEN_EMBEDDINGS="learned")
    assert json.loads((sweep_dir / units / "processed" / "split.json").read_text()) == {"splits": {"train": ["b"]}}


def test_a_failing_run_is_reported_and_the_sweep_goes_on_with_the_others(tmp_path):
    log = tmp_path / "calls.txt"
    failing = LOGGING_STUB + """if [[ " $* " == *"cluster.n_clusters=3 "* ]]; then echo "n_clusters = 3 refused" >&2; exit 2; fi
"""
    done = sweep(tmp_path, failing, "frame:n_clusters=3", "subband:bands=2", "frame:n_clusters=5",
                 "subband:n_clusters=3,bands=4", exit_code=1, LOG=str(log))
    calls = log.read_text().splitlines()
    evaluated = [line.split("--workdir ")[1].split()[0].rsplit("/", 1)[1] for line in calls
                 if line.startswith("run") and "--to evaluate" in line]
    assert evaluated == ["frame_n_clusters=3", "subband_bands=2", "frame_n_clusters=5", "subband_n_clusters=3_bands=4"]
    compared = calls[-1].split()
    assert compared[0] == "compare"
    assert [Path(arg).name for arg in compared[1:-2]] == ["base", "subband_bands=2", "frame_n_clusters=5"]
    assert "sweep: frame_n_clusters=3 failed (exit 2" in done.stderr
    assert "2 run(s) failed and are not in" in done.stderr
    assert "frame_n_clusters=3 subband_n_clusters=3_bands=4" in done.stderr.splitlines()[-1]


@pytest.mark.slow
def test_a_units_spec_is_a_row_of_the_family_table(tmp_path):
    """Real stages (about a minute on two shared cores): the units run computes hidden state 1 of a tiny random
    wav2vec2 over base's split, and compare names its family and bits per second."""
    import torch
    from projects import write_tone
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
    )).save_pretrained(tmp_path / "wav2vec2")
    rows = ["path,label"]
    for i in range(12):
        label = ("low", "mid", "high")[i % 3]
        write_tone(tmp_path / "audio" / f"clip{i:02d}.wav", [label], i)
        rows.append(f"audio/clip{i:02d}.wav,{label}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "config.toml").write_text(f"""[data]
manifest = "{tmp_path / 'manifest.csv'}"
[split]
strategy = "stratified"
validation_ratio = 0.25
[spectrogram]
workers = 1
[cluster]
niter = 2
[model]
num_layers = 1
hidden_size = 16
num_heads = 2
intermediate_size = 32
[train]
epochs = 1
batch_size = 8
device = "cpu"
num_workers = 0
[baseline]
models = "logreg"
workers = 1
""")
    stub = f"#!{sys.executable}\nfrom audiotokens.cli import main\nmain()\n"
    sweep(tmp_path, stub, "frame:n_clusters=4", "units:ssl_layer=1,n_clusters=4",
          "frames:spectrogram.features=ssl,spectrogram.ssl_layer=1,model.pooling=mean",
          SSL_MODEL=str(tmp_path / "wav2vec2"),
          AUDIOTOKENS_ARGS=f"--set spectrogram.ssl_model={tmp_path / 'wav2vec2'}")  # for the frames control too

    sweep_dir = tmp_path / "sweep"
    units = sweep_dir / "units_ssl_layer=1_n_clusters=4" / "processed"
    spec = json.loads((units / "frames" / "spec.json").read_text())
    assert spec["features"] == "ssl" and spec["ssl_layer"] == 1 and spec["sample_rate"] == 16000
    base_split = json.loads((sweep_dir / "base" / "processed" / "split.json").read_text())["splits"]
    assert json.loads((units / "split.json").read_text())["splits"] == base_split
    assert json.loads((sweep_dir / "base" / "processed" / "frames" / "spec.json").read_text())["features"] == "mel"
    with open(sweep_dir / "compare" / "compare.csv") as handle:
        table = {row["run"]: row for row in csv.DictReader(handle)}
    assert {run: row["family"] for run, row in table.items()} == {
        "base": "baseline", "frame_n_clusters=4": "mel-frame quantizer",
        "units_ssl_layer=1_n_clusters=4": "speech-model units",
        "frames_spectrogram.features=ssl_spectrogram.ssl_layer=1_pooling=mean": "frames control"}
    assert not table["frames_spectrogram.features=ssl_spectrogram.ssl_layer=1_pooling=mean"]["bits per second"]
    assert float(table["units_ssl_layer=1_n_clusters=4"]["bits per second"]) == pytest.approx(2 * 16000 / 20)
    assert float(table["frame_n_clusters=4"]["bits per second"]) == pytest.approx(2 * 22050 / 512)
    assert table["base"]["logreg/validation accuracy"] and table["units_ssl_layer=1_n_clusters=4"][
        "eval/validation accuracy"]


VOCAB_STUB = """#!/usr/bin/env bash
# a size of 3 is refused; any other run leaves the two files the table reads
args="$*"; dir=${args##*--workdir }; dir=${dir%% *}
[[ " $* " != *" cluster.n_clusters=3 "* ]] || { echo "n_clusters = 3 refused" >&2; exit 2; }
[[ " $* " == *" --from cluster "* ]] || exit 0
k=${args##*cluster.n_clusters=}; k=${k%% *}
mkdir -p "$dir/output/eval/validation" "$dir/tokenized"
echo "{\\"mAP\\": 0.$k}" > "$dir/output/eval/validation/metrics.json"
echo '{"splits": {"validation": {"codebooks": [{"perplexity": 1.5}]}}}' > "$dir/tokenized/stats.json"
"""


def test_the_vocabulary_sweep_reports_a_failing_size_and_goes_on(tmp_path):
    folder = stub_command(tmp_path, VOCAB_STUB)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "sweep_vocab.sh"), "config.toml", str(tmp_path / "sweep"),
                           "2", "3", "5"], env={**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    table = [line.split() for line in done.stdout.splitlines()[-3:]]
    assert table == [["2", "0.2000", "-", "1.5000"], ["3", "failed"], ["5", "0.5000", "-", "1.5000"]]
    assert "n_clusters=3 failed" in done.stderr and done.stderr.strip().endswith("1 size(s) failed: 3")
