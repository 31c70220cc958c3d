"""The ``cellflow`` command line: thin wrappers over the Python API.

Every command validates its arguments at the edge, runs one library call, and
prints a short rich summary. A cellflow error (bad input, a refused overwrite)
prints one clear line and exits with status 2; a full or read-only disk prints one
line saying what was kept and how to go on, and exits with status 1; nothing prints
a traceback at a user for a mistake in their input or a full disk.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cellflow.errors import CellflowError, StorageFullError, Terminated, halts_run

__all__ = ["app", "main"]

app = typer.Typer(
    name="cellflow",
    help="Deep-learning cell segmentation of microscopy screens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

Scheduler = Annotated[
    str | None,
    typer.Option(help="'threads' (default), 'processes', 'synchronous', or a scheduler address tcp://HOST:PORT"),
]


def _split(values: str | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(v.strip() for v in values.split(",") if v.strip())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _table(frame, title: str) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if frame[column].dtype.kind in "iuf" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    return table


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder (earlier demo outputs in it are replaced)")] = Path(
        "cellflow-demo"
    ),
    scheduler: Annotated[str | None, typer.Option(help="Address of a running scheduler tcp://HOST:PORT")] = None,
    real: Annotated[bool, typer.Option(help="Also score the classical baseline on the real images, if found")] = True,
) -> None:
    """Run the main job on an embedded default: a synthetic plate, auto-labelled and scored end to end."""
    from cellflow.demo import run_demo

    console.print(f"[bold]cellflow demo[/bold] -> {out}")
    result = run_demo(out, scheduler=scheduler, real=real, console=console)
    for run_result, what in ((result.synthetic, "synthetic plate"), (result.real, "real nuclei")):
        if run_result is None:
            continue
        for key, table in run_result.tables.items():
            if key.endswith("/plates"):
                console.print(_table(_score_view(table), f"{what}: {key.split('/')[0]} vs truth"))
    console.print(f"store: {result.synthetic.screen.path}; OME-Zarr for napari: {', '.join(map(str, result.ome_zarr))}")
    try:
        from cellflow.report import build_report

        console.print(f"report: {build_report(result.synthetic.screen.path)}", highlight=False, soft_wrap=True)
    except Exception as error:  # the demo's results stand; only its page is missing
        console.print(f"[yellow]report not written[/yellow]: {type(error).__name__}: {error}")


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="YAML pipeline spec (see specs/)")],
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running scheduler (tcp://HOST:PORT); overrides the spec")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
    cluster: Annotated[
        str | None,
        typer.Option(help="Cluster kind, overriding the spec: threads, local, local-cuda, address, kubernetes"),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Number of (CPU) workers, overriding the spec")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Recompute everything instead of resuming")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="On resume, re-hash every recorded chunk")] = False,
    report: Annotated[bool, typer.Option(help="Write the HTML run report (report.html beside run.json)")] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Let a stage replace a variable another stage wrote")
    ] = False,
) -> None:
    """Run a pipeline spec on its cluster (a local 2-worker cluster by default), resuming earlier work.

    Exit status: 0 all done; 3 finished with quarantined fields (listed, and in run.json);
    1 the run failed; 2 bad spec or input.
    """
    from cellflow.cluster import with_overrides
    from cellflow.pipeline import load_spec, run_spec

    parsed = load_spec(spec)
    if cluster is not None or workers is not None:
        parsed = parsed.model_copy(update={"cluster": with_overrides(parsed.cluster, kind=cluster, n_workers=workers)})
    console.print(f"[bold]cellflow run[/bold] {parsed.name} ({spec})")
    result = run_spec(parsed, scheduler=scheduler, console=console, progress=progress, resume=not fresh,
                      verify=verify, spec_path=spec, overwrite=overwrite)
    for key, table in result.tables.items():
        if key.endswith("/plates"):
            console.print(_table(_score_view(table), f"{key.split('/')[0]} vs truth, per plate"))
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(f"store: {result.screen.path}; tables: {Path(parsed.output.tables)}; {timings}")
    skipped = sum(s["skipped"] for s in result.stages.values())
    if skipped:
        console.print(f"resumed: {skipped} units were already done and were skipped")
    if result.quarantined:
        console.print(f"[bold red]{len(result.quarantined)} quarantined[/bold red] (stage, field, error):")
        for q in result.quarantined[:20]:
            console.print(f"  {q['stage']} {q['field']}: {q['error']}")
        if len(result.quarantined) > 20:
            console.print(f"  ... and {len(result.quarantined) - 20} more in {Path(parsed.output.tables) / 'run.json'}")
    if result.error:
        console.print(f"[bold red]{result.error}[/bold red]", highlight=False)
    if report:
        try:
            from cellflow.report import build_report

            console.print(f"report: {build_report(parsed.output.tables)}", highlight=False, soft_wrap=True)
        except Exception as error:  # the run's results stand; only its page is missing
            console.print(f"[yellow]report not written[/yellow]: {type(error).__name__}: {error}")
    console.print(f"status: {result.status}")
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _score_view(frame):  # type: ignore[no-untyped-def]
    """The columns a person reads first: average F1, F1@0.7, merges, splits."""
    wanted = ["plate", "well", "n_fields", "f1_mean", "f1_0.70", "merges", "splits", "extra"]
    return frame[[c for c in wanted if c in frame.columns]]


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="YAML training spec: name, input, train, model_dir")],
) -> None:
    """Train a segmentation network on a screen's channels against its labels (truth or auto labels)."""
    from cellflow.nn.train import train as run_training
    from cellflow.pipeline.runner import prepare_input
    from cellflow.pipeline.spec import load_train_spec

    parsed = load_train_spec(spec)
    params = parsed.params()
    labelling = parsed.labelling()
    if labelling is not None:  # make the training labels first (resumable, like any run)
        from cellflow.pipeline import run_spec

        console.print(f"[bold]labels[/bold]: {', '.join(labelling.stages)} -> {labelling.output.tables}")
        run = run_spec(labelling, console=console, spec_path=spec)
        if run.status == "failed":
            console.print(f"[bold red]the labelling stages failed[/bold red]: {run.error or run.quarantined[:3]}")
            raise typer.Exit(1)
        screen = run.screen
    else:
        screen = prepare_input(parsed.input)
    console.print(f"[bold]cellflow train[/bold] {parsed.name}: {params.model} on {list(params.channels)} "
                  f"-> {params.target} ({screen.path})")
    result = run_training(screen, params, out=parsed.model_dir, log=console.print)
    console.print(f"best validation F1 {result.best_f1:.3f} (epoch {result.best_epoch}; untrained "
                  f"{result.initial_f1:.3f}); model: {result.checkpoint}")


@app.command()
def segment(
    source: Annotated[Path, typer.Argument(
        help="Folder of TIFF/PNG/JPEG images (multi-page TIFFs are z-stacks), or a screen store")],
    output: Annotated[Path | None, typer.Argument(help="Folder for the label TIFFs (folder input only)")] = None,
    classical: Annotated[bool, typer.Option(help="Classical Otsu + watershed nuclei")] = False,
    model: Annotated[Path | None, typer.Option(help="A trained checkpoint (cellflow train) to segment with")] = None,
    tile: Annotated[int, typer.Option(help="Tile edge for the network, pixels")] = 512,
    diameter_px: Annotated[float | None, typer.Option(help="Expected nucleus diameter; default: estimated")] = None,
    channel: Annotated[
        str | None, typer.Option(help="Nuclear channel (default 'image' for folders, 'DNA' for stores)")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes (0: threads in this process)")] = 2,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running scheduler tcp://HOST:PORT")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing label files (a store's labels_nuclei)")] = False,
    keep_store: Annotated[Path | None, typer.Option(help="Keep the intermediate screen store here")] = None,
    rgb: Annotated[str, typer.Option(
        help="How RGB images become one channel: mean (grey images), red, green, blue, max, luminance")] = "mean",
) -> None:
    """Segment nuclei: a folder in -> one uint32 label TIFF per image (same stem); a store -> labels_nuclei."""
    from cellflow.graph.autolabel import AutolabelParams
    from cellflow.pipeline.segment import segment as run_segment
    from cellflow.pipeline.spec import ClusterSpec

    if classical == (model is not None):
        raise typer.BadParameter("choose --classical or --model CKPT (the shipped model is not in this version)")
    is_store = (source / "zarr.json").is_file()
    params = None if model is not None else AutolabelParams(
        nuclear_channel=channel or ("DNA" if is_store else "image"), diameter_px=diameter_px,
        illumination=is_store,
    )
    cluster = ClusterSpec(kind="threads") if workers == 0 else ClusterSpec(n_workers=workers)
    result = run_segment(
        source, output, params=params, model=model, tile=tile, cluster=cluster, scheduler=scheduler,
        overwrite=overwrite, keep_store=keep_store, console=console, rgb=rgb,
    )
    if not is_store:
        total = sum(result.objects.values())
        console.print(f"wrote {len(result.label_files)} label files ({total} nuclei) to {output}")
    else:
        console.print(f"labels_nuclei written into {result.store}")
    _print_skipped(result.skipped, source)
    _print_notes(result.notes)
    for path, reason in result.failed:
        console.print(f"[red]not segmented:[/red] {path}: {reason}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(code=3)


def _print_notes(notes: tuple[str, ...], shown: int = 5) -> None:
    """What the run said of readable inputs (a colour image reduced by the mean): the first few, then a count."""
    for note in notes[:shown]:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    if len(notes) > shown:
        console.print(f"[yellow]note:[/yellow] and {len(notes) - shown} more such notes", highlight=False)


def _print_skipped(skipped: tuple[str, ...], folder: Path, shown: int = 5) -> None:
    """Name the files a folder run left alone: not an error (notes, metadata), but never silent."""
    if not skipped:
        return
    names = [str(Path(p).relative_to(folder)) if Path(p).is_relative_to(folder) else p for p in skipped]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    console.print(f"[yellow]skipped {len(names)} file(s)[/yellow] that are not .png/.tif/.jpg images directly in "
                  f"{folder} (sub-folders are not read): {', '.join(names[:shown])}{more}",
                  highlight=False, soft_wrap=True)


@app.command()
def predict(
    source: Annotated[Path, typer.Argument(help="Folder of TIFF/PNG/JPEG images, or a screen store")],
    model: Annotated[Path | None, typer.Option(help="A trained checkpoint (cellflow train)")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for <stem>_prob.tif files (folder input only)")] = None,
    tile: Annotated[int, typer.Option(help="Tile edge (kept window), pixels")] = 512,
    halo: Annotated[int | None, typer.Option(help="Context around each tile; default the model's radius")] = None,
    batch: Annotated[int, typer.Option(help="Tiles per forward pass")] = 4,
    device: Annotated[str, typer.Option(help="Torch device of the workers: cpu, cuda")] = "cpu",
    workers: Annotated[int, typer.Option(help="Local worker processes (0: threads in this process)")] = 2,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running scheduler tcp://HOST:PORT")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace probability files (a store's probabilities)")] = False,
    keep_store: Annotated[Path | None, typer.Option(help="Keep the intermediate screen store here")] = None,
    rgb: Annotated[str, typer.Option(
        help="How RGB images become one channel: mean (grey images), red, green, blue, max, luminance")] = "mean",
) -> None:
    """Class probabilities: a folder in -> one float32 <stem>_prob.tif (classes, y, x) per image; a store -> in it."""
    from cellflow.graph.predict import PredictParams
    from cellflow.pipeline.predict import predict as run_predict
    from cellflow.pipeline.spec import ClusterSpec

    if model is None:
        raise typer.BadParameter("--model CKPT is required (the shipped model is not in this version; "
                                 "train one with `cellflow train`)", param_hint="--model")
    if out is not None and (source / "zarr.json").is_file():
        raise typer.BadParameter(f"{source} is a store: probabilities are written into it; drop --out",
                                 param_hint="--out")
    try:
        params = PredictParams(model=str(model), tile=tile, halo=halo, batch_size=batch, device=device)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    cluster = ClusterSpec(kind="threads") if workers == 0 else ClusterSpec(n_workers=workers)
    result = run_predict(source, out, params, cluster=cluster, scheduler=scheduler, overwrite=overwrite,
                         keep_store=keep_store, console=console, rgb=rgb)
    if not (source / "zarr.json").is_file():
        console.print(f"wrote {len(result.probability_files)} probability files to {out}")
    else:
        console.print(f"probabilities written into {result.store}")
    _print_skipped(result.skipped, source)
    _print_notes(result.notes)
    for path, reason in result.failed:
        console.print(f"[red]not predicted:[/red] {path}: {reason}", highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(code=3)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="New screen store (folder ending in .zarr)")],
    plates: Annotated[str, typer.Option(help="Comma-separated plate names")] = "P1",
    wells: Annotated[str, typer.Option(help="Comma-separated well names")] = "A01,A02",
    sites: Annotated[int, typer.Option(help="Sites per well")] = 4,
    size: Annotated[int, typer.Option(help="Field edge in pixels")] = 1024,
    channels: Annotated[str, typer.Option(help="Any of DNA,Cyto,BF")] = "DNA,Cyto,BF",
    z: Annotated[int, typer.Option(help="Focal planes")] = 3,
    t: Annotated[int, typer.Option(help="Time points")] = 1,
    interval_min: Annotated[float, typer.Option(help="Minutes between time points")] = 30.0,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same pixels")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cellflow store")] = False,
    scheduler: Scheduler = None,
) -> None:
    """Synthesize a plate with ground truth (truth_nuclei, truth_cells)."""
    from cellflow.cluster import scheduler_context
    from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

    spec = SyntheticSpec(
        plates=_split(plates) or (), wells=_split(wells) or (), sites=sites, shape_yx=(size, size),
        channels=_split(channels) or (), n_z=z, n_t=t, interval_min=interval_min, seed=seed,
    )
    with scheduler_context(scheduler) as sched:
        screen = write_synthetic_screen(out, spec, overwrite=overwrite, scheduler=sched)
    console.print(f"wrote {len(screen.fields())} fields to {screen.path}")


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="Folder of TIFF/PNG files (or an OME-Zarr plate with --ome-zarr)")],
    out: Annotated[Path, typer.Argument(help="New screen store")],
    pattern: Annotated[
        str | None, typer.Option(help="Filename template, e.g. '{well}_s{site}_w{channel}.tif'")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Built-in pattern: 'bbbc' (ImageXpress) or 'cellflow'")] = None,
    regex: Annotated[str | None, typer.Option(help="Regex with named groups instead of a template")] = None,
    nuclei_pairs: Annotated[bool, typer.Option(help="SOURCE/images + SOURCE/masks layout (masks -> truth)")] = False,
    ome_zarr: Annotated[bool, typer.Option(help="SOURCE is an OME-Zarr HCS plate")] = False,
    channel_names: Annotated[str | None, typer.Option(help="Map channel values, e.g. '1=DNA,2=Cyto'")] = None,
    rgb: Annotated[str | None, typer.Option(help="Reduce RGB files: mean, luminance, max, red, green, blue")] = None,
    pixel_size_um: Annotated[float, typer.Option(help="Pixel edge in micrometres")] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cellflow store")] = False,
    update: Annotated[
        bool, typer.Option(help="Add the files of fields an existing store (same folder and pattern) lacks")
    ] = False,
    scheduler: Scheduler = None,
) -> None:
    """Import images into a screen store; bad files are reported, the rest ingest."""
    from cellflow.cluster import scheduler_context

    chosen = [o for o in (pattern, preset, regex) if o] + (["nuclei-pairs"] if nuclei_pairs else [])
    chosen += ["ome-zarr"] if ome_zarr else []
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --pattern, --preset, --regex, --nuclei-pairs, --ome-zarr")
    if ome_zarr:
        from cellflow.screen.ome import import_ome_zarr

        screen = import_ome_zarr(source, out, overwrite=overwrite)
        console.print(f"imported {len(screen.fields())} fields into {screen.path}")
        return
    from cellflow.screen.ingest import FilenamePattern, ingest_nuclei_pairs
    from cellflow.screen.ingest import ingest as ingest_folder

    with _incomplete_store_on_full_disk(out), scheduler_context(scheduler) as sched:
        if nuclei_pairs:
            report = ingest_nuclei_pairs(source, out, overwrite=overwrite, scheduler=sched)
        else:
            names = dict(kv.split("=", 1) for kv in _split(channel_names) or ())
            if preset:
                fp = FilenamePattern.named(preset, channel_names=names, rgb=rgb)
            elif regex:
                fp = FilenamePattern.from_regex(regex, channel_names=names, rgb=rgb)
            else:
                fp = FilenamePattern(pattern, channel_names=names, rgb=rgb)
            report = ingest_folder(
                source, out, pattern=fp, overwrite=overwrite, update=update, scheduler=sched,
                pixel_size_um=pixel_size_um,
            )
    console.print(report.summary(), soft_wrap=True, highlight=False)
    if report.failed:
        raise typer.Exit(code=3)


@contextmanager
def _incomplete_store_on_full_disk(out: Path) -> Iterator[None]:
    """Say that a store made on a disk that filled up is incomplete, and how to remake it."""
    try:
        yield
    except OSError as error:
        if not halts_run(error) or isinstance(error, CellflowError):
            raise
        raise StorageFullError(
            f"{type(error).__name__}: {error.strerror}: the disk of {out} is full or read-only, and the new store "
            "there is incomplete; free space (or make it writable) and run the same command with --overwrite"
        ) from error


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="Screen store")],
    out: Annotated[Path, typer.Argument(help="Output OME-Zarr (HCS plate per screen plate)")],
    labels: Annotated[str | None, typer.Option(help="Comma-separated label variables (default: all)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing export")] = False,
    scheduler: Scheduler = None,
) -> None:
    """Export a screen as OME-Zarr HCS (plate/row/column/field, with labels) for napari."""
    from cellflow.cluster import scheduler_context
    from cellflow.screen.ome import export_ome_zarr
    from cellflow.screen.store import Screen

    with scheduler_context(scheduler) as sched:
        paths = export_ome_zarr(Screen.open(store), out, labels=_split(labels), overwrite=overwrite, scheduler=sched)
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
def info(store: Annotated[Path, typer.Argument(help="Screen store")]) -> None:
    """Validate a store and describe it: coordinates, variables, completeness."""
    from cellflow.screen.store import Screen

    screen = Screen.open(store)
    layout = screen.layout
    console.print(f"[bold]{screen.path}[/bold]  (screen_id {screen.screen_id}) is a valid cellflow screen")
    console.print(
        f"plates {list(layout.plates)}; {len(layout.wells)} wells; sites {list(layout.sites)}; "
        f"t (min) {list(layout.t_min)}; channels {list(layout.channels)}; z (um) {list(layout.z_um)}; "
        f"field {layout.shape_yx[0]}x{layout.shape_yx[1]} {layout.dtype} @ {layout.pixel_size_um} um/px"
    )
    fields = screen.fields()
    total = len(screen.fields(acquired_only=False))
    console.print(f"acquired fields: {len(fields)} of {total}")
    table = Table(title="variables")
    for column in ("variable", "dims", "dtype", "chunks complete"):
        table.add_column(column)
    ds = screen.dataset()
    for name in screen.variables:
        done = screen.ledger(name).completed() if name != "acquired" else None
        complete = "-" if done is None else f"{int(done.sum())}/{done.size}"
        table.add_row(name, ",".join(map(str, ds[name].dims)), str(ds[name].dtype), complete)
    console.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run's output.tables folder (the one holding run.json)")],
    out: Annotated[Path | None, typer.Option(help="Report file (default RUN_DIR/report.html)")] = None,
) -> None:
    """Write a run's self-contained HTML report from its run.json, tables and store."""
    from cellflow.report import build_report

    path = build_report(run_dir, out=out)
    console.print(f"report: {path}", highlight=False, soft_wrap=True)


deploy_app = typer.Typer(help="Kubernetes: render a spec's DaskJob + nightly CronJob; submit a run.",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("render")
def deploy_render(
    spec: Annotated[Path, typer.Argument(help="YAML pipeline spec (its cluster.kubernetes section sizes the pods)")],
    out: Annotated[Path, typer.Option(help="Folder for the YAML files")] = Path("deploy/k8s"),
    image: Annotated[str | None, typer.Option(help="Container image (the GPU image is IMAGE-cuda)")] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace")] = None,
    schedule: Annotated[str | None, typer.Option(help="Cron schedule of the nightly run, e.g. '0 2 * * *'")] = None,
) -> None:
    """Write the Kubernetes objects for a nightly run of SPEC (kubectl apply -f OUT)."""
    from cellflow.deploy import render_manifests, with_overrides, write_manifests
    from cellflow.pipeline import load_spec

    parsed = with_overrides(load_spec(spec), image=image, namespace=namespace, schedule=schedule)
    paths = write_manifests(render_manifests(parsed, spec.read_text()), out)
    console.print(f"wrote {len(paths)} objects to {out}: kubectl apply -f {out} (nightly); "
                  f"kubectl create -f {out}/run-now (one run now)", highlight=False, soft_wrap=True)


@deploy_app.command("submit")
def deploy_submit(
    manifests: Annotated[Path, typer.Argument(help="Folder with daskjob.yaml (+ daskworkergroup-*.yaml)")],
) -> None:
    """Start one run of a rendered DaskJob in this cluster (what the CronJob's launcher runs)."""
    from cellflow.deploy import submit

    console.print(f"submitted DaskJob {submit(manifests)}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status.

    0: done. 1: the run failed (e.g. the disk filled up: one line saying what to do). 2: bad
    input or usage (one clear line, no traceback). 3: finished, but some inputs were bad and
    are listed.
    """
    previous = _terminate_as_interrupt()
    try:
        app(args=argv, prog_name="cellflow")
    except SystemExit as done:  # click ends every run, usage errors included, with SystemExit
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except StorageFullError as error:  # not the input's fault: the run failed, and says how to go on
        console.print(f"[red]stopped:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 1
    except (CellflowError, FileNotFoundError) as error:
        # escape: messages quote patterns such as [a-z0-9] that rich would take for markup
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except OSError as error:
        if not halts_run(error):
            raise
        where = f" ({error.filename})" if error.filename else ""
        console.print(f"[red]stopped:[/red] {escape(f'{type(error).__name__}: {error.strerror}{where}')}: the disk "
                      "is full or read-only; free space (or choose a writable place) and run the command again",
                      highlight=False, soft_wrap=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM raise :class:`~cellflow.errors.Terminated` in the main thread; the previous handler.

    Kubernetes (pod eviction, a CronJob's deadline) and batch schedulers stop a job with
    SIGTERM, which by default ends Python at once: no ``run.json``, a plate view that keeps
    saying "running", worker processes torn down mid-write. Raised as an interrupt instead,
    it ends the run as Ctrl-C does (finished units recorded, status ``interrupted``, exit
    130). None where no handler can be installed (not the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signal.Signals(signum).name}")

    return signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
