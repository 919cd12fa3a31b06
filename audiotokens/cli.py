"""Thin click layer: options -> Config -> stage, one command per entry of the stage table.

Every command takes the common options (--config, --workdir, --set, -v). Package modules below the
pipeline's table are imported inside the command that runs them (marked "on use"): `audiotokens --help`
and shell completion then start in a fraction of a second instead of loading torch, faiss and librosa.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from .config import load_config, valid_keys
from .errors import UserError
from .pipeline.files import DISK_REFUSED
from .pipeline.layout import SHARDS_DIR, Layout
from .pipeline.stages import BY_NAME, NAMES
from .tuning import DEFAULT_STUDY


def _flag_options(stage: str):
    """Decorator adding the stage's named flags; their values become overrides."""

    def decorate(func):
        for flag, key in reversed(list(BY_NAME[stage].flags.items() if stage in BY_NAME else ())):
            dest = "flag__" + key.replace(".", "__")
            func = click.option(flag, dest, default=None, help=f"= --set {key}=…")(func)
        return func

    return decorate


def common_options(stage: str | None = None):
    def decorate(func):
        @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="TOML config file (defaults: configs/default.toml values).")
        @click.option("--workdir", default=".", show_default=True, type=click.Path(file_okay=False),
                      help="Where processed/, output/ and tokenized/ live.")
        @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                      help="Override one config value (repeatable).")
        @click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
        @_flag_options(stage or "")
        @functools.wraps(func)
        def wrapper(config_path, workdir, overrides, verbose, **kwargs):
            _setup_logging(verbose)
            flags = [f"{name[6:].replace('__', '.')}={value}" for name, value in list(kwargs.items())
                     if name.startswith("flag__") and value is not None]
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("flag__")}
            config = load_config(config_path, [*overrides, *flags], workdir)
            if config.cluster.quantizer == "codec":  # the codec's own frames, from its folder
                from .tokens.codec import with_codec_frames  # on use: start-up time

                config = with_codec_frames(config)
            return func(config, **kwargs)

        return wrapper

    return decorate


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True)
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "filelock", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Group(click.Group):
    """Turns UserError (and disk errors) into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OSError as exc:
            if exc.errno not in DISK_REFUSED:  # a full, read-only or forbidden disk is the user's to fix
                raise
            where = exc.filename or "a file in the workdir"
            click.echo(f"error: {where}: {exc.strerror}; check the free space and permissions there, or "
                       "point --workdir elsewhere", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="audiotokens")
def main():
    pass


main.help = f"Classify audio as token sequences: {' → '.join(NAMES)}."


STRICT = click.option("--strict", is_flag=True, help="Refuse to run on stale inputs.")
SHARD_OPTIONS = (
    click.option("--shard", default=None, metavar="K/N",
                 help="Compute only shard K (from 0) of N slices of the clips; no assembly, no record."),
    click.option("--shards", default=0, type=int, metavar="N",
                 help="Cut the work into N shards (default: the N of unfinished shards on disk, else 1 "
                      "locally or two per dask worker)."),
    click.option("--assemble", is_flag=True, help="Only assemble finished shards into the store."),
    click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
                 help="Where unfinished shards run: here, or as tasks on a dask.distributed cluster."),
    click.option("--scheduler", default=None, metavar="ADDRESS",
                 help="The dask scheduler (tcp://host:8786); default: a local cluster."),
)


def _stage_command(name: str):
    """The command of a stage, with the options its table entry asks for (shards, --resume)."""
    stage = BY_NAME[name]

    def command(config, strict, **options):
        from .pipeline.run import execute  # on use: start-up time

        if stage.sharded:
            options = _shard_options(name, config, strict, **options)
            if options is None:
                return
        execute(name, config, strict=strict, **options)

    command.__doc__ = stage.help
    options = [STRICT]
    if stage.sharded:
        options += SHARD_OPTIONS
    if stage.resumable:
        checkpoint = Layout(".").resume_checkpoint(name)
        options.append(click.option("--resume", is_flag=True, help=f"Continue from {checkpoint}."))
    for option in reversed(options):
        command = option(command)
    return main.command(name)(common_options(name)(command))


def _shard_options(name: str, config, strict: bool, shard, shards, assemble, executor, scheduler) -> dict | None:
    """The pipeline's options for a sharded stage; runs the one shard itself (None) when --shard is given."""
    from .pipeline.shards import Shard, run_shard  # on use: start-up time

    if shard is not None:
        if assemble or executor != "local" or shards:
            raise UserError("--shard runs one shard by itself; drop --assemble, --shards and --executor")
        run_shard(name, config, Shard.parse(shard), strict=strict)
        return None
    if scheduler and executor != "dask":
        raise UserError("--scheduler is the address of a dask cluster; add --executor dask")
    if shards < 0:
        raise UserError(f"--shards must be >= 0, got {shards}")
    return {"assemble": assemble, "executor": executor, "scheduler": scheduler, "shards": shards}


# evaluate takes options beyond its table entry (another split, a manifest, corruptions): defined below
for _name in NAMES:
    if _name != "evaluate":
        _stage_command(_name)


@main.command(help=BY_NAME["evaluate"].help)
@common_options("evaluate")
@click.option("--split", "split_name", default=None,
              help="One split to score (default: the stage, which scores validation and then test).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Evaluate on audio listed in a CSV manifest (path,label[,group]) instead of a split.")
@click.option("--class", "class_name", default=None, help="Threshold sweep for this class too.")
@click.option("--model", "model_dir", default=None,
              help="Another model bundle (default: <workdir>/output/model; then no provenance record).")
@click.option("--corrupt", "corruptions", multiple=True, metavar="SPEC",
              help="Also score the audio (the split's, or the manifest's) under this corruption "
                   "(repeatable), e.g. noise:snr=10, noise:snr=5,kind=pink, noise:dir=PATH,snr=10, "
                   "reverb:rt60=0.6, reverb:dir=PATH.")
@click.option("--strict", is_flag=True, help="Refuse to run on stale inputs.")
def evaluate(config, split_name, manifest, class_name, model_dir, strict, corruptions):
    from .pipeline.run import execute  # on use: start-up time

    if corruptions:
        from .evaluation.robustness import baselines_only, evaluate_robustness  # on use: start-up time

        if manifest is None and baselines_only(config, model_dir):  # no model: the baselines alone
            evaluate_robustness(config, split_name or "validation", list(corruptions))
            return
    if split_name is None and manifest is None and model_dir is None:
        execute("evaluate", config, strict=strict, class_name=class_name)
    else:
        from .evaluation.evaluate import Evaluator  # on use: start-up time

        Evaluator(config, split=split_name, manifest=manifest, class_name=class_name, model_dir=model_dir).run()
    if corruptions:
        from .evaluation.robustness import evaluate_robustness  # on use: start-up time

        evaluate_robustness(config, split_name, list(corruptions), model_dir, manifest)


@main.command()
@common_options()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_dir", default=None, help="Model bundle (default: <workdir>/output/model).")
@click.option("--top-k", default=5, show_default=True)
@click.option("--threshold", default=None, type=float, help="Report every class scoring at least this.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--timeline", is_flag=True,
              help="Score windows along each recording (any length): per-window scores, events and a PNG.")
@click.option("--window", type=float, default=None, help="--timeline: window in seconds (default: the model's).")
@click.option("--hop", type=float, default=None,
              help="--timeline: seconds between windows (default: the model's).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="--timeline: folder for its files (default: the current folder).")
def predict(config, paths, model_dir, top_k, threshold, fmt, timeline, window, hop, out_dir):
    """Class scores for audio files, directories or list files; with --timeline, when each class occurs."""
    if timeline:
        from .evaluation.timeline import timeline_cli  # on use: start-up time

        sys.exit(timeline_cli(paths, model_dir, config.workdir, threshold, fmt, window, hop, out_dir))
    if window is not None or hop is not None or out_dir is not None:
        raise UserError("--window, --hop and --out go with --timeline")
    from .evaluation.predict import predict_cli  # on use: start-up time

    sys.exit(predict_cli(paths, model_dir, config.workdir, top_k, threshold, fmt))


@main.command()
@common_options()
@click.argument("audio", type=click.Path())
@click.option("--model", "model_dir", default=None, help="Model bundle (default: <workdir>/output/model).")
@click.option("--out", "out_path", default=None, help="PNG to write (default: <audio name>.tokens.png).")
def show(config, audio, model_dir, out_path):
    """Picture of a clip: mel spectrogram, its token strip and the top predictions."""
    from .evaluation.predict import show_cli  # on use: start-up time

    show_cli(audio, model_dir, config.workdir, out_path)


@main.command()
@common_options()
def status(config):
    """One line per stage: fresh, stale (and why), missing or failed; a missing stage that `run` skips under
    this config (pretrain without train.init, cluster and tokenize over waveform rows) says so."""
    from .pipeline.provenance import stage_states  # on use: start-up time

    for name, state in stage_states(Layout(config.workdir), config).items():
        if state.state == "missing" and not BY_NAME[name].in_run(config):
            click.echo(f"{name}: not used by this config (`run` skips it)")
        else:
            click.echo(state.line())
    _shard_lines(config)


def _shard_lines(config) -> None:
    """Shards of a sharded stage computed and not yet assembled (the store is unchanged until then)."""
    layout = Layout(config.workdir)
    for name, folder in (("spectrogram", layout.frames_dir), ("tokenize", layout.tokenized)):
        if (folder / SHARDS_DIR).is_dir():
            from .pipeline.shards import pending_line  # only when shards are on disk: it imports torch

            try:
                pending = BY_NAME[name].runner_class()(config).pending_shards()
            except UserError:  # inputs gone or damaged: the stage's own line already says so
                continue
            if pending:
                click.echo(pending_line(name, *pending))


@main.command("run")
@common_options()
@click.option("--from", "start", type=click.Choice(NAMES), default=None, help="First stage to consider.")
@click.option("--to", "stop", type=click.Choice(NAMES), default=None, help="Last stage to consider.")
@click.option("--force", is_flag=True, help="Re-run every stage in the range, fresh or not.")
@click.option("--strict", is_flag=True, help="Refuse to run on stale inputs.")
def run_command(config, start, stop, force, strict):
    """Run the stages in order, skipping those that are fresh."""
    from .pipeline.run import plan, run  # on use: start-up time

    todo = plan(config, start, stop, force)
    click.echo(f"stages to run: {', '.join(todo) if todo else 'none (everything is fresh)'}")
    run(config, start, stop, force, strict)


@main.command("compare")
@common_options()
@click.argument("workdirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for compare.md, compare.csv and compare.png (default: <workdir>/compare).")
def compare_command(config, workdirs, out_dir):
    """One table of runs: the settings that differ, validation/test metrics, baselines, k-fold, train time."""
    from .evaluation.compare import compare_workdirs, comparison_markdown, write_comparison  # on use


    comparison = compare_workdirs([Path(w) for w in workdirs])
    written = write_comparison(comparison, out_dir or Path(config.workdir) / "compare")
    click.echo(comparison_markdown(comparison))
    click.echo(f"wrote {', '.join(str(path) for path in written.values())}")


@main.command("export")
@common_options()
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--model", "model_dir", default=None, help="Model bundle (default: <workdir>/output/model).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="File to write (default: model.onnx beside the bundle).")
@click.option("--input", "graph_input", type=click.Choice(["tokens", "frames"]), default=None,
              help="What the graph reads (default: what the model reads); frames puts a tokens model's "
                   "quantizer in the graph.")
def export_command(config, fmt, model_dir, out_path, graph_input):
    """The classifier as ONNX (scores out), its vocabulary and metadata beside it."""
    from .model.export import export_model  # on use: start-up time

    written = export_model(fmt, model_dir or Layout(config.workdir).model_dir, out_path, graph_input)
    click.echo(f"wrote {written}")


@main.command("report")
@common_options()
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="HTML file to write (default: <workdir>/output/report.html).")
@click.option("--compare", "compare", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Workdir of another run (a frames control, a CNN, a sweep) whose model joins the answer table "
                   "(repeatable).")
def report_command(config, out_path, compare):
    """One self-contained HTML page of the run: the answer first (models vs baselines, validation and test),
    then splits, tokens, training, evaluation, robustness, baselines, and the settings folded away."""
    from .evaluation.html_report import write_report  # on use: start-up time

    click.echo(f"wrote {write_report(config.workdir, out_path, compare)}")


@main.command("tune")
@common_options()
@click.option("--space", "space_path", required=True, type=click.Path(dir_okay=False),
              help="TOML file whose [space] table gives config keys their choices or ranges.")
@click.option("--trials", default=20, show_default=True, type=int,
              help="Finished trials the study should have (earlier runs and other processes included).")
@click.option("--storage", default=None, metavar="URL",
              help="Database of the study, e.g. postgresql://host/db for several machines "
                   "(default: sqlite in <workdir>/tune/study.db).")
@click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True,
              help="Name of the study; its files go in <workdir>/tune/<study>/.")
@click.option("--timeout", default=None, type=float, metavar="SECONDS",
              help="Start no trial after this many seconds.")
@click.option("--prune-after", "prune_after", default=None, type=int, metavar="EPOCHS",
              help="First epoch at which a trial may be pruned (default: a quarter of train.epochs, at least 2).")
@click.option("--base-trial/--no-base-trial", "base_trial", default=True, show_default=True,
              help="A new study's first trial is the base configuration (--config, --set), when the space "
                   "can draw its values.")
@click.option("--pruner", "pruner_name", default="median", show_default=True, metavar="NAME",
              help="median, percentile:P (stop trials below the P-th percentile of earlier ones) or none.")
@click.option("--seed", default=None, type=int,
              help="Seed of the sampler: one process with the same seed, space and configuration draws the same "
                   "trials (default: unseeded).")
def tune_command(config, space_path, trials, storage, study_name, timeout, prune_after, pruner_name, base_trial,
                 seed):
    """Search the settings of --space with Optuna; each trial a workdir under <workdir>/tune/, picked on
    validation (test is scored once, for the best trial); writes tune/best.toml, the trials table and plots."""
    from .tuning import require_optuna  # on use: start-up time

    require_optuna()
    from .tuning.tune import tune

    tune(config, space_path, trials, storage, study_name, timeout, prune_after=prune_after, base_trial=base_trial,
         seed=seed, pruner_name=pruner_name)


@main.command("config")
@common_options()
def show_config(config):
    """Print the resolved configuration as TOML-like text, then the valid keys."""
    for section, values in config.to_dict().items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {json.dumps(value)}")
        click.echo("")
    click.echo(f"# {len(valid_keys())} keys")


if __name__ == "__main__":
    main()
