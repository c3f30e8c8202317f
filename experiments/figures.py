"""Figures 1-5, 8 and 9 of the paper, drawn from OUR runs (``scripts/figures.py`` is the CLI).

* Figure 2 (:func:`fig2`): test error (100 - accuracy %) against epoch of the Table 2
  runs, CIFAR-10 and CIFAR-100, small learning-rate regime (rows 1, 2: lr 0.01) and large
  (rows 3, 4: lr 0.05); BN dashed, MN solid, one colour per weight decay.  The curve is
  the mean over the seeds found; the shaded band is +-1 standard deviation of that curve
  within a sliding window of 10 epochs (the paper's caption: "one standard deviation
  computed within a window of 10 epochs"), see :func:`windowed_std`.
* Figure 3 (:func:`fig3`): CIFAR-100; left, the number of EM iterations (BN-2, MN-2 = 2,
  MN-5 = 4, MN-6 = 8); right, where MN sits (BN-2, MN-2 conv3, MN-7 conv2, MN-8 conv2 +
  conv3).
* Figure 1 (:func:`fig1`): the input of conv2's normalization (the conv2 convolution's
  output) for a batch of test images, from a trainer snapshot (:func:`conv2_activations`)
  or from a saved (N, C, H, W) tensor; for a few random channels, the raw histogram with
  the fitted density (BN: one Gaussian; MN:K: the K-component diagonal GMM of
  :func:`mixnorm.fit_gmm` fitted to all C channels jointly, each component's weighted 1-D
  marginal dashed, p(x) solid) and the histogram after normalisation (BN; MN Eq. 34-36).
* Figure 4 (:func:`fig4`): Inception-V3 test error against epoch, as Figure 2: (a)
  CIFAR-10 and (b) CIFAR-100 small learning rate (Table 4 BN-1 and MN rows), (c)
  CIFAR-100 large learning rate (BN-5, MN-5), (d) CIFAR-100 with Nesterov and two lr
  drop policies (Table 6 rows).
* Figure 5 (:func:`fig5`): DenseNet (k = 12) on CIFAR-100, BN vs MN at L = 40 and 100:
  training error, training cross-entropy, test error, test cross-entropy against epoch;
  band +-1 std within a 3-epoch window (the paper's caption).
* Figure 8 (:func:`fig8`): the fitted mixture of "inc2/0/2/4" saved by
  ``train.save_mixtures`` at 20/40/60/80/100% of training (Table 4 CIFAR-100 MN-4):
  rows = saved iterations, columns = random channels, the weighted component densities
  lambda_k N(x; mu_kc, var_kc) coloured by the rank of lambda_k.
* Figure 9 (:func:`fig9`): the effective number of mixture components (``mn/<layer>/
  components`` in log.json) of every MN module of "inc2/0" and "inc3/0" against epoch,
  Table 4 MN-4 on CIFAR-10 and CIFAR-100, running average with a +-1 std band.

The paper publishes only tables, not its curves: nothing here draws the paper's curves.
Figures from smoke, synthetic-data or subset runs say so in their title.  Every figure is
written as ``<name>.png`` and ``<name>.pdf`` plus ``<name>.json`` (what was plotted: the
run directories used, the seeds, the missing runs).
"""
from mixnorm import _compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import dataclasses
import glob
import math
import os
import re

import numpy
import yaml

import matplotlib
matplotlib.use('Agg')
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402

import mixnorm  # noqa: E402
from experiments import config as config_lib  # noqa: E402
from experiments import data as data_lib  # noqa: E402
from experiments import records  # noqa: E402

FIGURES_DIR = os.path.join(os.path.dirname(records.RUNS_ROOT), 'figures')
REPRODUCE = 'python scripts/reproduce.py'
WINDOW = 10                  # epochs in the std window of Figure 2 (paper's caption)
SNAPSHOT_PREFIX = 'updater/model:main/'   # model params inside a trainer snapshot
DATASET_TITLES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100'}

BN_STYLE = dict(linestyle='--', linewidth=1.3)
MN_STYLE = dict(linestyle='-', linewidth=1.6)
DENSITY_COLOR = '#00897b'    # the paper's "solid teal curve"
COMPONENT_COLORS = ('#e53935', '#1e88e5', '#fb8c00', '#8e24aa', '#43a047')
PAIR_COLORS = ('#1f77b4', '#d62728')   # weight decay 1e-4 / 2e-5 (rows 1, 3 / 2, 4)
WARN_COLOR = '#c62828'


# --------------------------------------------------------------------------- style

def style():
    """The one style every figure is drawn in (a ``matplotlib.rc_context``)."""
    return matplotlib.rc_context({
        'figure.dpi': 100, 'savefig.dpi': 150, 'savefig.bbox': 'tight',
        'font.size': 9, 'axes.titlesize': 10, 'axes.labelsize': 9, 'legend.fontsize': 7.5,
        'xtick.labelsize': 8, 'ytick.labelsize': 8, 'figure.titlesize': 11,
        'axes.grid': True, 'grid.alpha': 0.3, 'grid.linewidth': 0.5,
        'axes.spines.top': False, 'axes.spines.right': False,
        'legend.frameon': False, 'lines.linewidth': 1.5,
    })


def save(fig, out_dir, name, sources=None):
    """Write ``<name>.png``, ``<name>.pdf`` (and ``<name>.json`` from ``sources``) under
    ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ('png', 'pdf'):
        path = os.path.join(out_dir, '%s.%s' % (name, ext))
        fig.savefig(path, metadata={'CreationDate': None} if ext == 'pdf' else None)
        paths.append(path)
    plt.close(fig)
    if sources is not None:
        path = os.path.join(out_dir, name + '.json')
        records.write_json(path, sources)
        paths.append(path)
    return paths


def _header(fig, title, warning=None):
    """Bold title (and the red not-comparable notice under it) at the top of ``fig``;
    returns the figure fraction left for the axes (``rect`` top of tight_layout)."""
    fig.text(0.5, 1.0, title, ha='center', va='top', fontsize=11, fontweight='bold')
    lines = 1
    if warning:
        fig.text(0.5, 1.0 - 0.24 / fig.get_figheight(), warning, ha='center', va='top',
                 color=WARN_COLOR, fontsize=9, fontweight='bold')
        lines = 2
    return 1.0 - (0.12 + 0.24 * lines) / fig.get_figheight()


@dataclasses.dataclass
class FigureResult:
    """What a figure function did: ``files`` written (empty if nothing to draw),
    ``missing`` [(dataset, row)] runs, ``commands`` that make them, ``warning`` (the
    not-comparable notice in the title, or None) and free-text ``notes``."""
    name: str
    files: list
    missing: list = dataclasses.field(default_factory=list)
    commands: list = dataclasses.field(default_factory=list)
    warning: str = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def rendered(self):
        return bool(self.files)


# ------------------------------------------------------------------ runs and curves

def paper_dataset(run):
    """The paper dataset a run stands for: ``data.dataset`` for CIFAR runs; for
    synthetic-data runs the dataset folder of the row config it was made from (read from
    the ``# resolved from:`` line of its config.yaml); None if that cannot be told."""
    ds = run.config['data']['dataset']
    if ds != 'synthetic':
        return ds
    try:
        with open(os.path.join(run.path, 'config.yaml')) as f:
            first = f.readline()
    except OSError:
        return None
    found = re.findall(r'configs/[^/\s,]+/(cifar10|cifar100)/', first)
    return found[-1] if found else None


def not_comparable_reasons(cfg):
    """Why a run (its config) is not comparable to the paper: [] if it is."""
    reasons = []
    if cfg.get('smoke'):
        reasons.append('smoke preset')
    if cfg['data']['dataset'] == 'synthetic':
        reasons.append('synthetic data')
    subset = cfg['data'].get('subset')
    if subset is not None:
        reasons.append('subset %s images' % ('/'.join(map(str, subset))
                                             if isinstance(subset, list) else subset))
    return reasons


def warning_for(cfgs):
    """The title notice for figures drawn from these run configs (None if all are full
    paper-setting runs)."""
    reasons = []
    for cfg in cfgs:
        for r in not_comparable_reasons(cfg):
            if r not in reasons:
                reasons.append(r)
    if not reasons:
        return None
    head = 'SMOKE RUN' if any(c.get('smoke') for c in cfgs) else 'NOT A PAPER-SETTING RUN'
    return '%s - not comparable to the paper (%s)' % (head, '; '.join(reasons))


def collect_runs(root, experiment='table2'):
    """{(paper dataset, row): [Run, ...]} of the runs of ``experiment`` under ``root``."""
    out = {}
    for run in records.find_runs(root, experiment=experiment):
        ds = paper_dataset(run)
        if ds is not None:
            out.setdefault((ds, run.config['row']), []).append(run)
    return out


def pick_runs(runs):
    """The runs a curve is drawn from (only runs with test accuracies count): the
    paper-setting runs if there are any, else the runs of one kind -- the kind with the
    fewest reasons not to compare (real data before synthetic), then the most seeds --
    so that smoke, subset and synthetic runs of a row are never averaged together."""
    groups = {}
    for r in runs:
        if any(records.TEST_ACC in e for e in r.log):
            key = (tuple(not_comparable_reasons(r.config)), r.config['train']['epochs'])
            groups.setdefault(key, []).append(r)
    if not groups:
        return []
    best = min(groups, key=lambda k: (len(k[0]), 'synthetic data' in k[0],
                                      -len(groups[k]), -k[1], k))
    return sorted(groups[best], key=lambda r: (r.config['train']['seed'], r.path))


def metric_curve(logs, key, transform=None):
    """(epochs, mean, logs per epoch) of the LogReport value ``key`` (``transform``-ed)
    from LogReport lists (one per seed): each epoch's value is averaged over the logs
    that reached it (and report ``key`` there)."""
    per_epoch = {}
    for log in logs:
        for e in log:
            if e.get(key) is not None:
                v = float(e[key])
                per_epoch.setdefault(int(e['epoch']), []).append(
                    transform(v) if transform else v)
    epochs = numpy.array(sorted(per_epoch), dtype=numpy.int64)
    mean = numpy.array([numpy.mean(per_epoch[e]) for e in epochs], dtype=numpy.float64)
    count = numpy.array([len(per_epoch[e]) for e in epochs], dtype=numpy.int64)
    return epochs, mean, count


def _error_percent(accuracy):
    return 100.0 * (1.0 - accuracy)


def error_curve(logs):
    """(epochs, mean test error %, seeds per epoch) from LogReport lists (one per seed):
    the error at each epoch is averaged over the logs that reached it."""
    return metric_curve(logs, records.TEST_ACC, _error_percent)


# What a curve panel can show: name -> (LogReport key, transform, axis label).
METRICS = {
    'test_error': (records.TEST_ACC, _error_percent, 'test error (%)'),
    'test_loss': (records.TEST_LOSS, None, 'test cross-entropy'),
    'train_error': ('main/accuracy', _error_percent, 'training error (%)'),
    'train_loss': ('main/loss', None, 'training cross-entropy'),
}


def _finite_windows(y, window):
    """For each entry of ``y``, the finite values of the centred window of ``window``
    consecutive entries ``i - window // 2`` .. ``i + (window - 1) // 2`` (truncated)."""
    y = numpy.asarray(y, dtype=numpy.float64)
    if window < 1:
        raise ValueError('window must be >= 1, got %r' % (window,))
    for i in range(len(y)):
        w = y[max(0, i - window // 2):i + (window - 1) // 2 + 1]
        yield w[numpy.isfinite(w)]


def windowed_std(y, window=WINDOW):
    """Standard deviation (ddof 0) of ``y`` within a sliding window of ``window``
    consecutive entries centred on each entry -- entries ``i - window // 2`` to
    ``i + (window - 1) // 2``, truncated at the ends; NaNs are ignored (0 where the
    window holds fewer than two finite values)."""
    return numpy.array([w.std() if len(w) > 1 else 0.0 for w in _finite_windows(y, window)])


def on_epoch_grid(epochs, values):
    """Values on the contiguous grid 1..max(epochs) (NaN where an epoch is missing), so
    that the window of :func:`windowed_std` spans epochs, not log entries."""
    grid = numpy.arange(1, int(epochs.max()) + 1) if len(epochs) else numpy.arange(0)
    full = numpy.full(grid.shape, numpy.nan)
    full[epochs - 1] = values
    return grid, full


def windowed_mean(y, window=WINDOW):
    """Running average of ``y`` over the same centred window as :func:`windowed_std`
    (NaNs ignored; NaN where the window holds no finite value)."""
    return numpy.array([w.mean() if len(w) else numpy.nan
                        for w in _finite_windows(y, window)])


def row_config(dataset, row, experiment='table2'):
    """The resolved config of a row from ``configs/`` (for labels and commands)."""
    path = os.path.join(config_lib.CONFIG_ROOT, experiment, dataset, row + '.yaml')
    return config_lib.load_config(path)


def _g(v):
    """0.01 -> '0.01', 1e-4 -> '1e-4', 1.5e-4 -> '1.5e-4'."""
    if v == 0 or abs(v) >= 1e-3:
        return '%g' % v
    mantissa, exponent = ('%.3e' % v).split('e')
    return '%se%d' % (mantissa.rstrip('0').rstrip('.'), int(exponent))


def row_label(dataset, row, what, experiment='table2'):
    """``'BN-2 (wd 2e-5)'``, ``'MN-5 (EM 4)'``, ``'MN-7 (conv2)'`` ... from the configs;
    ``what`` also ``'lr'``, ``'mn'`` (layers, K, EM iter.), ``'drops'`` (lr drops)."""
    try:
        cfg = row_config(dataset, row, experiment)
    except (OSError, config_lib.ConfigError):
        return row
    mn = cfg.get('mn')
    parts = []
    if what == 'lr_wd':
        parts += ['lr %s' % _g(cfg['optimizer']['lr']),
                  'wd %s' % _g(cfg['optimizer']['weight_decay'])]
    elif what == 'em' and mn:
        parts.append('EM %d' % mn['em_iters'])
    elif what == 'layers' and mn:
        parts.append('+'.join(mn['layers']))
    elif what == 'lr':
        parts.append('lr %s' % _g(cfg['optimizer']['lr']))
    elif what == 'mn' and mn:
        parts.append('%s, K %d, EM %d' % ('+'.join(mn['layers']), mn['n_components'],
                                          mn['em_iters']))
    elif what == 'drops' and cfg['schedule'].get('at'):
        parts.append('lr x%g at %s%%' % (cfg['schedule']['factor'], '/'.join(
            '%g' % (100 * a) for a in cfg['schedule']['at'])))
    return '%s (%s)' % (row, ', '.join(parts)) if parts else row


def reproduce_command(dataset, rows, runs_root=None, experiment='table2'):
    cmd = '%s %s --dataset %s --rows %s' % (REPRODUCE, experiment, dataset, ','.join(rows))
    if runs_root and os.path.abspath(runs_root) != os.path.abspath(records.RUNS_ROOT):
        cmd += ' --runs-root %s' % runs_root
    return cmd


def train_command(experiment, dataset, row, runs_root=None, seed=0):
    """``python -m experiments.train configs/<experiment>/<dataset>/<row>.yaml`` (for
    experiments without a reproduce.py command: DenseNet), with ``--out`` when the runs
    go elsewhere than results/runs."""
    cmd = 'python -m experiments.train configs/%s/%s/%s.yaml' % (experiment, dataset, row)
    if runs_root and os.path.abspath(runs_root) != os.path.abspath(records.RUNS_ROOT):
        cmd += ' --out %s' % os.path.join(runs_root, experiment, dataset, row, 'seed%d' % seed)
    return cmd


TRAIN_COMMAND_EXPERIMENTS = ('densenet',)   # no reproduce.py rows: one train command/row


def commands_for_runs(keys, runs_root):
    """The commands that make the runs ``keys`` [(experiment, dataset, row)]: one
    reproduce.py command per (experiment, dataset), or a train command per row."""
    groups = {}
    for exp, ds, row in keys:
        groups.setdefault((exp, ds), []).append(row)
    out = []
    for (exp, ds), rows in groups.items():
        if exp in TRAIN_COMMAND_EXPERIMENTS:
            out += [train_command(exp, ds, row, runs_root) for row in rows]
        else:
            out.append(reproduce_command(ds, rows, runs_root, exp))
    return out


def _commands_for(missing, runs_root, experiment='table2'):
    return commands_for_runs([(experiment, ds, row) for ds, row in missing], runs_root)


# -------------------------------------------------------- curve figures (2, 3, 4, 5)

@dataclasses.dataclass
class Panel:
    """One panel of a curve figure: ``curves`` [(row, label, color, line style)] of the
    runs of ``experiment`` on ``dataset``, showing ``metric`` (a key of METRICS)."""
    title: str
    dataset: str
    curves: list
    experiment: str = 'table2'
    metric: str = 'test_error'


def _as_panel(p):
    return p if isinstance(p, Panel) else Panel(*p)


def _draw_curves(ax, all_runs, dataset, curves, window, used, missing,
                 metric='test_error', experiment='table2'):
    """Draw ``curves`` [(row, label, color, style)] of ``dataset`` on ``ax``; fill
    ``used`` (json records) and ``missing``; returns the configs of the runs drawn."""
    key, transform, _ = METRICS[metric]
    cfgs = []
    for row, label, color, line in curves:
        runs = pick_runs(all_runs.get((dataset, row), []))
        if not runs:
            missing.append((dataset, row))
            continue
        epochs, mean, count = metric_curve([r.log for r in runs], key, transform)
        if not len(epochs):        # the runs never logged this value
            missing.append((dataset, row))
            continue
        grid, full = on_epoch_grid(epochs, mean)
        band = windowed_std(full, window)
        planned = max(r.config['train']['epochs'] for r in runs)
        extra = []
        if len(runs) > 1:
            extra.append('%d seeds' % len(runs))
        if epochs.max() < math.floor(planned):
            extra.append('%d/%g ep' % (epochs.max(), planned))
        name = label + (' [%s]' % ', '.join(extra) if extra else '')
        ok = numpy.isfinite(full)
        ax.plot(grid[ok], full[ok], color=color, label=name,
                marker='o' if ok.sum() < 3 else None, markersize=3, **line)
        ax.fill_between(grid[ok], (full - band)[ok], (full + band)[ok], color=color,
                        alpha=0.15, linewidth=0)
        cfgs += [r.config for r in runs]
        rec = {'dataset': dataset, 'row': row, 'label': name,
               'runs': [r.path for r in runs],
               'seeds': [r.config['train']['seed'] for r in runs],
               'epochs': epochs.tolist(), metric: mean.round(4).tolist(),
               'seeds_per_epoch': count.tolist(),
               'windowed_std': band[epochs - 1].round(4).tolist(),
               'not_comparable': not_comparable_reasons(runs[0].config)}
        if experiment != 'table2' or metric != 'test_error':
            rec.update(experiment=experiment, metric=metric)
        used.append(rec)
    return cfgs


def _missing_hint(missing, experiment, runs_root=None):
    """The in-panel note naming the missing rows and (briefly: no --runs-root / --out,
    which the printed report and the JSON sidecar give in full) the commands."""
    names = ', '.join(row for _, row in missing)
    if experiment in TRAIN_COMMAND_EXPERIMENTS:
        cmds = '\n'.join('python -m experiments.train\n    configs/%s/%s/%s.yaml'
                         % (experiment, ds, row) for ds, row in missing)
    else:
        cmds = 'scripts/reproduce.py %s --dataset %s\n    --rows %s' % (
            experiment, missing[0][0], ','.join(row for _, row in missing))
    return 'no runs of %s; make them with\n%s' % (names, cmds)


def _finish_axes(ax, title, drawn, missing, ylabel='test error (%)', hint=None):
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if drawn:
        ax.legend(loc='upper right')
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if missing:
        ax.text(0.02, 0.03 if drawn else 0.5,
                hint or _missing_hint(missing, 'table2'),
                transform=ax.transAxes, fontsize=6, color='0.35',
                va='bottom' if drawn else 'center', family='monospace')


def _curve_figure(name, title, panels, runs_root, out_dir, window, ncols, footer=None,
                  hint_panels=None, panel_size=(4.6, 3.4)):
    """Shared body of Figures 2-5: ``panels`` [:class:`Panel` or (panel title, dataset,
    curves)].  ``hint_panels``: indices of the panels that print the commands of their
    missing runs (default all)."""
    panels = [_as_panel(p) for p in panels]
    all_runs = {exp: collect_runs(runs_root, exp)
                for exp in dict.fromkeys(p.experiment for p in panels)}
    planned = []
    for p in panels:
        for row, *_ in p.curves:
            if (p.experiment, p.dataset, row) not in planned:
                planned.append((p.experiment, p.dataset, row))
    present = [k for k in planned if pick_runs(all_runs[k[0]].get(k[1:], []))]
    missing_keys = [k for k in planned if k not in present]
    missing = list(dict.fromkeys(k[1:] for k in missing_keys))
    commands = commands_for_runs(missing_keys, runs_root)
    if not present:
        return FigureResult(name, [], missing, commands)
    nrows = int(math.ceil(len(panels) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols,
                                                         panel_size[1] * nrows),
                                 squeeze=False)
        used, cfgs = [], []
        for i, (ax, p) in enumerate(zip(axes.flat, panels)):
            panel_missing = []
            cfgs += _draw_curves(ax, all_runs[p.experiment], p.dataset, p.curves, window,
                                 used, panel_missing, p.metric, p.experiment)
            show = hint_panels is None or i in hint_panels
            _finish_axes(ax, p.title, len(panel_missing) < len(p.curves),
                         panel_missing if show else [], METRICS[p.metric][2],
                         _missing_hint(panel_missing, p.experiment)
                         if panel_missing and show else None)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        warning = warning_for(cfgs)
        top = _header(fig, title, warning)
        fig.text(0.5, -0.01, footer or (
            'Our runs only (the paper publishes no curves). Line: mean test error over '
            'seeds; band: +-1 std within a %d-epoch window.' % window),
            ha='center', va='top', fontsize=7, color='0.4')
        fig.tight_layout(rect=(0, 0, 1, top))
        sources = {
            'figure': name, 'title': title, 'warning': warning, 'window': window,
            'runs_root': os.path.abspath(runs_root), 'curves': used,
            'missing': ['%s %s' % k for k in missing], 'commands': commands}
        if any(p.experiment != 'table2' for p in panels):
            sources['missing_runs'] = [dict(zip(('experiment', 'dataset', 'row'), k))
                                       for k in missing_keys]
            sources['panels'] = [dataclasses.asdict(p) | {'curves': [c[0] for c in p.curves]}
                                 for p in panels]
        files = save(fig, out_dir, name, sources)
    return FigureResult(name, files, missing, commands, warning)


def fig2(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
    """Figure 2: test error vs epoch, CIFAR-10/100 x small/large learning rate."""
    panels = []
    for ds in ('cifar10', 'cifar100'):
        for regime, (a, b) in (('(a) small learning rate', (1, 2)),
                               ('(b) large learning rate', (3, 4))):
            curves = []
            for i, color in zip((a, b), PAIR_COLORS):
                for kind, line in (('BN', BN_STYLE), ('MN', MN_STYLE)):
                    row = '%s-%d' % (kind, i)
                    curves.append((row, row_label(ds, row, 'lr_wd'), color, line))
            panels.append(('%s %s' % (DATASET_TITLES[ds], regime), ds, curves))
    return _curve_figure('fig2', 'Figure 2: test error of the CIFAR CNN (Table 2 runs), '
                         'BN dashed, MN solid', panels, runs_root, out_dir, window, ncols=2)


def fig3(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
    """Figure 3: CIFAR-100, effect of EM iterations (left) and of MN's layer (right)."""
    ds = 'cifar100'
    colors = ('#1f77b4', '#ff7f0e', '#2ca02c')
    base = ('BN-2', row_label(ds, 'BN-2', 'lr_wd'), 'black', BN_STYLE)
    left = [base] + [(row, row_label(ds, row, 'em'), c, MN_STYLE)
                     for row, c in zip(('MN-2', 'MN-5', 'MN-6'), colors)]
    right = [base] + [(row, row_label(ds, row, 'layers'), c, MN_STYLE)
                      for row, c in zip(('MN-2', 'MN-7', 'MN-8'), colors)]
    panels = [('CIFAR-100: number of EM iterations', ds, left),
              ('CIFAR-100: MN at different layers', ds, right)]
    return _curve_figure('fig3', 'Figure 3: CIFAR CNN on CIFAR-100 (Table 2 runs)',
                         panels, runs_root, out_dir, window, ncols=2)


# ---------------------------------------------------------- Figures 4, 5 (deep nets)

ROW_COLORS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd')
DEPTH_COLORS = {40: '#1f77b4', 100: '#d62728'}
DENSENET_WINDOW = 3          # Figure 5's caption: "computed within a window of 3 epochs"


def fig4(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
    """Figure 4: Inception-V3 test error vs epoch.  (a) CIFAR-10 and (b) CIFAR-100,
    small learning rate (Table 4: BN-1 and the MN rows); (c) CIFAR-100, large learning
    rate (BN-5 vs MN-5); (d) CIFAR-100 with Nesterov and two lr drop policies (Table 6).
    The caption gives no window for the band: the 10 epochs of Figure 2."""
    def rows(ds, exp, names, what):
        out = []
        colors = iter(ROW_COLORS)
        for row in names:
            bn = row.startswith('BN')
            out.append((row, row_label(ds, row, what if not bn else 'lr', exp),
                        'black' if bn else next(colors), BN_STYLE if bn else MN_STYLE))
        return out

    def policies():
        out = []
        for pol, color in zip(('policy1', 'policy2'), PAIR_COLORS):
            for kind, line in (('BN', BN_STYLE), ('MN', MN_STYLE)):
                row = '%s-%s' % (kind, pol)
                out.append((row, row_label('cifar100', row, 'drops', 'table6'), color, line))
        return out

    panels = [
        Panel('(a) CIFAR-10, small learning rate', 'cifar10',
              rows('cifar10', 'table4', ('BN-1', 'MN-1', 'MN-2', 'MN-3', 'MN-4'), 'mn'),
              'table4'),
        Panel('(b) CIFAR-100, small learning rate', 'cifar100',
              rows('cifar100', 'table4', ('BN-1', 'MN-1', 'MN-2', 'MN-4'), 'mn'), 'table4'),
        Panel('(c) CIFAR-100, large learning rate', 'cifar100',
              rows('cifar100', 'table4', ('BN-5', 'MN-5'), 'lr'), 'table4'),
        Panel('(d) CIFAR-100, Nesterov, two lr drop policies', 'cifar100', policies(),
              'table6'),
    ]
    return _curve_figure(
        'fig4', 'Figure 4: test error of Inception-V3 (Table 4 runs; (d) Table 6 runs), '
        'BN dashed, MN solid', panels, runs_root, out_dir, window, ncols=2,
        panel_size=(5.6, 3.9))


def fig5(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, window=DENSENET_WINDOW):
    """Figure 5: DenseNet (k = 12) on CIFAR-100, BN vs MN at L = 40 and 100: (a) training
    error, (b) training cross-entropy, (c) test error, (d) test cross-entropy against
    epoch; band +-1 std within a 3-epoch window (the paper's caption)."""
    curves = []
    for depth in (40, 100):
        for kind, line in (('BN', BN_STYLE), ('MN', MN_STYLE)):
            curves.append(('%s-L%d' % (kind, depth), '%s, L=%d' % (kind, depth),
                           DEPTH_COLORS[depth], line))
    panels = [Panel('(%s) %s' % (letter, METRICS[m][2]), 'cifar100', curves, 'densenet', m)
              for letter, m in zip('abcd', ('train_error', 'train_loss', 'test_error',
                                            'test_loss'))]
    footer = ('Our runs only (the paper publishes no curves). Training values are the '
              'epoch averages logged during training; line: mean over seeds; band: +-1 '
              'std within a %d-epoch window.' % window)
    return _curve_figure('fig5', 'Figure 5: DenseNet (k=12) on CIFAR-100, BN dashed, MN '
                         'solid', panels, runs_root, out_dir, window, ncols=2,
                         footer=footer, hint_panels=(0,), panel_size=(4.8, 3.4))


# ------------------------------------------------- Figures 8, 9 (mixture components)

MIXTURE_LAYER = 'inc2/0/2/4/bn'     # Sec. 5.2: "inc2/0/2/4" (fifth BN, third branch)
FIG9_PREFIXES = ('inc2/0', 'inc3/0')


def _mixture_stem(layer):
    return layer.strip('/').replace('/', '-')


def mixture_files(run_dir, layer=MIXTURE_LAYER):
    """[(iteration, path)] of the mixtures of ``layer`` saved by ``train.SaveMixtures``
    in ``run_dir/mixtures/``, by iteration."""
    pattern = os.path.join(run_dir, 'mixtures', _mixture_stem(layer) + '_iter*.npz')
    out = []
    for path in glob.glob(pattern):
        m = re.search(r'_iter(\d+)\.npz$', path)
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def load_mixture(path):
    """A saved mixture: ``{'weights' (K',), 'means' (K', C), 'variances' (K', C),
    'iteration', 'layer'}``, components sorted by weight, heaviest first."""
    try:
        with numpy.load(path, allow_pickle=False) as z:
            d = {k: numpy.asarray(z[k]) for k in ('weights', 'means', 'variances')}
            it = int(z['iteration']) if 'iteration' in z.files else None
            layer = str(z['layer']) if 'layer' in z.files else None
    except (OSError, KeyError, ValueError) as e:
        raise ValueError('%s is not a saved mixture (weights, means, variances): %s'
                         % (path, e))
    w, m, v = (d[k].astype(numpy.float64) for k in ('weights', 'means', 'variances'))
    if w.ndim != 1 or m.ndim != 2 or m.shape != v.shape or m.shape[0] != w.shape[0]:
        raise ValueError('%s: expected weights (K,), means and variances (K, C); got %s, '
                         '%s, %s' % (path, w.shape, m.shape, v.shape))
    if not (numpy.isfinite(w).all() and numpy.isfinite(m).all() and (v > 0).all()):
        raise ValueError('%s: non-finite weights/means or non-positive variances' % path)
    order = numpy.argsort(-w, kind='stable')
    return {'weights': w[order], 'means': m[order], 'variances': v[order],
            'iteration': it, 'layer': layer}


def planned_iterations(run):
    """Total planned iterations of a run (``train.max_iterations``, else epochs x the
    iterations per epoch read from its log); None if that cannot be told."""
    if run.config['train'].get('max_iterations'):
        return int(run.config['train']['max_iterations'])
    last = next((e for e in reversed(run.log) if e.get('iteration') and e.get('epoch')),
                None)
    if last is None:
        return None
    return int(round(last['iteration'] / float(last['epoch']) * run.config['train']['epochs']))


def find_mixture_run(runs_root=records.RUNS_ROOT, layer=MIXTURE_LAYER, dataset='cifar100',
                     row='MN-4', experiment='table4'):
    """(run with saved mixtures of ``layer`` or None, [runs of the row without them]):
    the paper-setting run if any, else the kind with the fewest reasons not to compare
    (real data before synthetic), lowest seed."""
    runs = collect_runs(runs_root, experiment).get((dataset, row), [])
    with_mix = [r for r in runs if mixture_files(r.path, layer)]
    without = [r for r in runs if r not in with_mix]
    if not with_mix:
        return None, without
    best = min(with_mix, key=lambda r: (len(not_comparable_reasons(r.config)),
                                        'synthetic data' in not_comparable_reasons(r.config),
                                        -len(mixture_files(r.path, layer)),
                                        r.config['train']['seed'], r.path))
    return best, without


def _kilo(it):
    return '%.1fK' % (it / 1000.0) if it >= 1000 else '%d' % it


def rank_colors(k):
    """Colour of the component of weight rank 0..k-1 (same rank, same colour)."""
    if k <= len(COMPONENT_COLORS):
        return list(COMPONENT_COLORS[:k])
    cmap = matplotlib.colormaps['tab10' if k <= 10 else 'viridis']
    return [cmap(i if k <= 10 else i / (k - 1)) for i in range(k)]


def fig8_data(run_dir, layer=MIXTURE_LAYER, n_channels=6, seed=0):
    """The mixtures Figure 8 draws: ``{'run', 'iterations', 'mixtures', 'channels',
    'planned_iterations'}``; channels a sorted random subset (``seed``)."""
    files = mixture_files(run_dir, layer)
    if not files:
        saved = sorted(os.listdir(os.path.join(run_dir, 'mixtures'))) \
            if os.path.isdir(os.path.join(run_dir, 'mixtures')) else []
        raise FileNotFoundError(
            'no saved mixtures of %s in %s (looked for mixtures/%s_iter<k>.npz; found: %s). '
            'A run saves them when its config has train.save_mixtures: [%s] (the Table 4 '
            'MN-4 configs do); an older run needs retraining (scripts/reproduce.py ... '
            '--force) or --set train.save_mixtures=[%s]'
            % (layer, run_dir, _mixture_stem(layer), ', '.join(saved) or 'nothing',
               layer, layer))
    run = records.Run(run_dir)
    mixtures = [load_mixture(p) for _, p in files]
    sizes = {m['means'].shape[1] for m in mixtures}
    if len(sizes) != 1:
        raise ValueError('%s: the saved mixtures of %s differ in channel count: %s'
                         % (run_dir, layer, sorted(sizes)))
    C = sizes.pop()
    rs = numpy.random.RandomState(seed)
    channels = numpy.sort(rs.choice(C, size=min(int(n_channels), C), replace=False))
    return {'run': run, 'iterations': [it for it, _ in files], 'mixtures': mixtures,
            'channels': channels, 'n_channels_total': C,
            'planned_iterations': planned_iterations(run)}


def fig8(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, run_dir=None,
         layer=MIXTURE_LAYER, n_channels=6, seed=0, name='fig8'):
    """Figure 8: the fitted mixture of ``layer`` (default inc2/0/2/4) of an MN run at
    the saved iterations (20/40/60/80/100% of training): rows = iterations, columns = a
    seeded random subset of channels; each panel the weighted 1-D component densities
    lambda_k N(x; mu_kc, var_kc), coloured by the rank of lambda_k.  ``run_dir`` default:
    the Table 4 CIFAR-100 MN-4 run under ``runs_root`` (:func:`find_mixture_run`)."""
    notes = []
    if run_dir is None:
        run, without = find_mixture_run(runs_root, layer)
        if run is None:
            commands = [reproduce_command('cifar100', ['MN-4'], runs_root, 'table4')]
            if without:
                notes.append('runs of table4 cifar100 MN-4 without saved mixtures of %s '
                             '(made before train.save_mixtures was set?): %s; retrain '
                             'with --force' % (layer, ', '.join(r.path for r in without)))
            return FigureResult(name, [], [('cifar100', 'MN-4')], commands, notes=notes)
        run_dir = run.path
    data = fig8_data(run_dir, layer, n_channels, seed)
    run, channels, total = data['run'], data['channels'], data['planned_iterations']
    cfg = run.config
    K = max(len(m['weights']) for m in data['mixtures'])
    colors = rank_colors(K)
    ds = paper_dataset(run) or cfg['data']['dataset']
    warning = warning_for([cfg])
    nrows, ncols = len(data['mixtures']), len(channels)
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols + 0.9, 1.25 * nrows + 0.6),
                                 squeeze=False, sharex='col')
        rows_json = []
        for j, c in enumerate(channels):
            lo, hi = numpy.inf, -numpy.inf
            for m in data['mixtures']:
                sd = numpy.sqrt(m['variances'][:, c])
                lo = min(lo, float((m['means'][:, c] - 3.5 * sd).min()))
                hi = max(hi, float((m['means'][:, c] + 3.5 * sd).max()))
            xs = numpy.linspace(lo, hi, 400)
            for i, m in enumerate(data['mixtures']):
                ax = axes[i, j]
                w, mu, var = m['weights'], m['means'][:, c], m['variances'][:, c]
                for k in range(len(w)):
                    y = w[k] * gaussian_pdf(xs, mu[k], var[k])
                    ax.fill_between(xs, 0, y, color=colors[k], alpha=0.18, linewidth=0)
                    ax.plot(xs, y, color=colors[k], linewidth=1.1)
                ax.set_yticks([])
                ax.grid(False)
                ax.tick_params(labelsize=6.5)
                ax.set_ylim(bottom=0)
                if i == 0:
                    ax.set_title('channel %d' % c, fontsize=8.5)
        for i, (it, m) in enumerate(zip(data['iterations'], data['mixtures'])):
            frac = ' (%d%%)' % round(100.0 * it / total) if total else ''
            axes[i, 0].set_ylabel('@ %s iter.%s' % (_kilo(it), frac), fontsize=7.5)
            axes[i, -1].text(1.03, 0.5, "K'=%d\n" % len(m['weights']) + '\n'.join(
                'λ%d %.2f' % (k + 1, w) for k, w in enumerate(m['weights'])),
                transform=axes[i, -1].transAxes, fontsize=5.8, va='center',
                family='monospace', color='0.3')
            rows_json.append({
                'iteration': it, 'fraction': it / float(total) if total else None,
                'weights': m['weights'].tolist(),
                'means': m['means'][:, channels].tolist(),
                'variances': m['variances'][:, channels].tolist()})
        for ax in axes[-1]:
            ax.set_xlabel('x (input of the MN)', fontsize=7)
        handles = [matplotlib.lines.Line2D([], [], color=colors[k], linewidth=2)
                   for k in range(K)]
        labels = ['rank %d%s' % (k + 1, ' (largest λ)' if k == 0 else '') for k in range(K)]
        title = ('Figure 8: mixture components of %s, %s %s on %s (%s of %d channels)'
                 % (layer[:-3] if layer.endswith('/bn') else layer,
                    cfg['experiment'].replace('table', 'Table '),
                    cfg['row'], DATASET_TITLES.get(ds, ds), len(channels),
                    data['n_channels_total']))
        top = _header(fig, title, warning)
        fig.legend(handles, labels, loc='lower center', ncol=K, fontsize=7,
                   bbox_to_anchor=(0.5, -0.005))
        fig.text(0.5, -0.035, 'Weighted component densities λ_k N(x; μ_kc, σ²_kc) of the '
                 'mixture fitted at each saved iteration (train.save_mixtures), coloured by '
                 'the rank of '
                 'λ_k. Our run, not the paper\'s.', ha='center', va='top', fontsize=6.5,
                 color='0.4')
        fig.tight_layout(rect=(0, 0.03, 1, top))
        files = save(fig, out_dir, name, {
            'figure': name, 'title': title, 'warning': warning, 'run': run.path,
            'layer': layer, 'seed': seed, 'channels': channels.tolist(),
            'n_channels_total': data['n_channels_total'],
            'planned_iterations': total, 'rows': rows_json,
            'not_comparable': not_comparable_reasons(cfg)})
    return FigureResult(name, files, warning=warning, notes=notes)


def component_keys(log):
    """{MN link path: LogReport key} of the ``mn/<path>/components`` entries of a log."""
    out = {}
    for e in log:
        for k in e:
            if k.startswith('mn/') and k.endswith('/components'):
                out.setdefault(k[len('mn/'):-len('/components')], k)
    return out


def _under(path, prefixes):
    return any(path == p or path.startswith(p + '/') for p in prefixes)


def fig9(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW, row='MN-4',
         prefixes=FIG9_PREFIXES):
    """Figure 9: effective number of mixture components K' (``mn/<path>/components``, the
    epoch average LogReport writes) against epoch for every MN module under ``prefixes``
    (inc2/0 and inc3/0: 10 modules; every MN module if none is there), one panel per
    dataset (CIFAR-10, CIFAR-100), Table 4 ``row``; the line is the running average over
    ``window`` epochs, the band +-1 std in the same window."""
    name = 'fig9'
    all_runs = collect_runs(runs_root, 'table4')
    datasets = ('cifar10', 'cifar100')
    picked = {ds: pick_runs(all_runs.get((ds, row), [])) for ds in datasets}
    notes, missing = [], []
    for ds in datasets:
        runs = picked[ds]
        if runs and not any(component_keys(r.log) for r in runs):
            notes.append('%s %s runs log no mn/<layer>/components (not an MN row?)'
                         % (ds, row))
            picked[ds] = []
        if not picked[ds]:
            missing.append((ds, row))
    commands = [reproduce_command(ds, [r], runs_root, 'table4') for ds, r in missing]
    if len(missing) == len(datasets):
        return FigureResult(name, [], missing, commands, notes=notes)
    with style():
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.4 * len(datasets), 3.8),
                                 squeeze=False)
        used, cfgs = [], []
        for ax, ds, letter in zip(axes[0], datasets, 'ab'):
            runs = picked[ds]
            ptitle = '(%s) %s, %s' % (letter, DATASET_TITLES[ds], row)
            if not runs:
                ax.set_title(ptitle)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(0.02, 0.5, 'no run of %s on %s; make it with\n%s' % (
                    row, DATASET_TITLES[ds], reproduce_command(ds, [row], runs_root,
                                                              'table4').replace(
                        ' --dataset', '\n    --dataset')),
                    transform=ax.transAxes, fontsize=6, color='0.35', va='center',
                    family='monospace')
                continue
            cfgs += [r.config for r in runs]
            keys = {}
            for r in runs:
                for p, k in component_keys(r.log).items():
                    keys.setdefault(p, k)
            chosen = [p for p in keys if _under(p, prefixes)]
            if not chosen:
                chosen = list(keys)
                notes.append('%s: no MN module under %s; showing every MN module (%s)'
                             % (ds, ' or '.join(prefixes), ', '.join(chosen)))
                ptitle += ' (all MN modules: none under %s)' % '/'.join(prefixes)
            K = max((r.config.get('mn') or {}).get('n_components', 1) for r in runs)
            colors = matplotlib.colormaps['tab10' if len(chosen) <= 10 else 'tab20']
            for i, p in enumerate(chosen):
                epochs, mean, count = metric_curve([r.log for r in runs], keys[p])
                grid, full = on_epoch_grid(epochs, mean)
                smooth, band = windowed_mean(full, window), windowed_std(full, window)
                ok = numpy.isfinite(smooth)
                color = colors(i % colors.N)
                label = p[:-3] if p.endswith('/bn') else p
                ax.plot(grid[ok], smooth[ok], color=color, linewidth=1.3, label=label,
                        marker='o' if ok.sum() < 3 else None, markersize=3)
                ax.fill_between(grid[ok], (smooth - band)[ok], (smooth + band)[ok],
                                color=color, alpha=0.12, linewidth=0)
                used.append({'dataset': ds, 'row': row, 'module': p, 'key': keys[p],
                             'runs': [r.path for r in runs],
                             'seeds': [r.config['train']['seed'] for r in runs],
                             'epochs': epochs.tolist(), 'components': mean.tolist(),
                             'seeds_per_epoch': count.tolist(),
                             'smoothed': smooth[epochs - 1].tolist(),
                             'windowed_std': band[epochs - 1].tolist(),
                             'not_comparable': not_comparable_reasons(runs[0].config)})
            ax.axhline(K, color='0.5', linestyle=':', linewidth=1.0)
            ax.set_ylim(0.5, K + 0.5)
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_title(ptitle + ', K = %d' % K)
            ax.set_xlabel('epoch')
            ax.set_ylabel("effective number of components K'")
            ax.legend(loc='lower left', ncol=2, fontsize=6.5)
        warning = warning_for(cfgs)
        title = ('Figure 9: mixture components used by the MN modules of %s, Inception-V3 '
                 '(Table 4 %s)' % (' and '.join(prefixes), row))
        top = _header(fig, title, warning)
        fig.text(0.5, -0.01, "Our runs only. K' = components kept after discarding those "
                 'with weight < min_weight, averaged over each epoch (and over seeds); line: '
                 'running average over %d epochs, band: +-1 std in the same window.'
                 % window, ha='center', va='top', fontsize=7, color='0.4')
        fig.tight_layout(rect=(0, 0, 1, top))
        files = save(fig, out_dir, name, {
            'figure': name, 'title': title, 'warning': warning, 'window': window,
            'row': row, 'prefixes': list(prefixes), 'runs_root': os.path.abspath(runs_root),
            'curves': used, 'notes': notes, 'missing': ['%s %s' % k for k in missing],
            'commands': commands})
    return FigureResult(name, files, missing, commands, warning, notes)


# ------------------------------------------------------------------------- Figure 1

def _snapshot_model_prefix(snapshot):
    try:
        with numpy.load(snapshot) as npz:
            keys = npz.files
    except Exception as e:
        raise ValueError('%s is not a readable Chainer snapshot (npz): %s' % (snapshot, e))
    for prefix in (SNAPSHOT_PREFIX, ''):
        if prefix + 'predictor/linear/W' in keys:
            with numpy.load(snapshot) as npz:
                return prefix, int(npz[prefix + 'predictor/linear/W'].shape[0])
    raise ValueError('%s holds no CIFAR CNN classifier (no key %spredictor/linear/W); '
                     'pass a trainer snapshot snapshot_epoch_<e> of a cifar_cnn run'
                     % (snapshot, SNAPSHOT_PREFIX))


def conv2_activations(snapshot, run_dir=None, n_images=128, seed=0, data_dir=None):
    """The conv2 convolution output (what conv2's BN/MN normalizes) of a CIFAR CNN
    trainer snapshot for ``n_images`` test images of the run's dataset (drawn with
    ``seed``): conv1 block (batch statistics, as in training) -> max pool -> conv2.conv.

    ``run_dir`` (default: the snapshot's folder) supplies ``config.yaml``.  Returns
    ``(activations (N, 128, 16, 16) float32, info dict)``.  Raises FileNotFoundError
    for a missing snapshot/config/dataset and ValueError for a wrong model.
    """
    if not os.path.isfile(snapshot):
        raise FileNotFoundError(
            'snapshot not found: %s (a run writes snapshot_epoch_<e> every '
            'train.snapshot_every epochs into its run directory, e.g. %s)'
            % (snapshot, os.path.join('results', 'runs', 'table2', 'cifar100', 'BN-2',
                                      'seed0', 'snapshot_epoch_50')))
    run_dir = run_dir or os.path.dirname(os.path.abspath(snapshot))
    cfg_path = os.path.join(run_dir, 'config.yaml')
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError('no config.yaml in %s: pass the run directory of the '
                                'snapshot with --run-dir' % run_dir)
    with open(cfg_path) as f:
        cfg = config_lib.validate(yaml.safe_load(f))
    if cfg['model']['name'] != 'cifar_cnn':
        raise ValueError('Figure 1 needs a CIFAR CNN run (model cifar_cnn); %s is a %s run'
                         % (run_dir, cfg['model']['name']))
    prefix, n_classes = _snapshot_model_prefix(snapshot)

    from experiments import train  # noqa: E402  (heavier; only Figure 1 needs it)
    classifier = train.build_model(cfg, n_classes)
    chainer.serializers.load_npz(snapshot, classifier, path=prefix)
    model = classifier.predictor

    d = cfg['data']
    try:
        dataset = data_lib.load_dataset(d['dataset'], data_dir or d['data_dir'],
                                        subset=d['subset'], seed=cfg['train']['seed'])
    except FileNotFoundError as e:
        raise FileNotFoundError('Figure 1 needs test images of %s (the dataset of %s), '
                                'which were not found: %s\nPoint --data-dir at them.'
                                % (d['dataset'], run_dir, e))
    rs = numpy.random.RandomState(seed)
    n = min(int(n_images), dataset.n_test)
    idx = numpy.sort(rs.permutation(dataset.n_test)[:n])
    x = dataset.test_x[idx]
    with chainer.using_config('train', True), chainer.no_backprop_mode():
        h = model.conv1(x)
        h = F.max_pooling_2d(h, 3, stride=2)
        a = model.conv2.conv(h).array
    epoch = re.search(r'snapshot_epoch_(\d+)$', snapshot)
    info = {'snapshot': os.path.abspath(snapshot), 'run_dir': os.path.abspath(run_dir),
            'row': cfg['row'], 'dataset': d['dataset'], 'source': dataset.source,
            'epoch': int(epoch.group(1)) if epoch else None,
            'epochs_planned': cfg['train']['epochs'], 'n_images': n, 'image_seed': seed,
            'not_comparable': not_comparable_reasons(cfg), 'config': cfg}
    return numpy.asarray(a, dtype=numpy.float32), info


def load_activations(path):
    """A saved (N, C, H, W) activation tensor (``.npy``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError('activation file not found: %s' % path)
    a = numpy.load(path, allow_pickle=False)
    if a.ndim != 4:
        raise ValueError('%s: activations must have shape (N, C, H, W), got %s'
                         % (path, a.shape))
    if not numpy.isfinite(a).all():
        raise ValueError('%s: activations contain NaN or Inf' % path)
    return a.astype(numpy.float32)


def gaussian_pdf(x, mean, var):
    return numpy.exp(-0.5 * (x - mean) ** 2 / var) / numpy.sqrt(2 * math.pi * var)


def component_marginals(gmm, channel, x):
    """(K, len(x)) weighted 1-D marginal densities w_k N(x | mu_kc, var_kc) of a
    diagonal GMM along ``channel``; their sum is the mixture's marginal p(x)."""
    w = numpy.asarray(gmm.weights, numpy.float64)
    m = numpy.asarray(gmm.means, numpy.float64)[:, channel]
    v = numpy.asarray(gmm.variances, numpy.float64)[:, channel]
    return w[:, None] * gaussian_pdf(x[None, :], m[:, None], v[:, None])


def skewness(v):
    v = numpy.asarray(v, numpy.float64)
    s = v.std()
    return float(((v - v.mean()) ** 3).mean() / s ** 3) if s > 0 else 0.0


def fig1_data(activations, n_channels=4, seed=0, ks=(2, 3), em_iters=8, eps=2e-5):
    """Everything Figure 1 draws, from activations (N, C, H, W).

    The n = N*H*W points in R^C are normalised with BN (per-channel batch mean and
    variance) and, for each K in ``ks``, with MN: a diagonal GMM fitted to all C channels
    jointly by :func:`mixnorm.fit_gmm` (the paper's ``em_iters`` split into K-means and
    EM iterations, seeded by ``seed``), posteriors, then Eq. 34-36 without affine.
    Returns ``{'channels', 'raw' (n, c), 'methods': [(name, GMM, normalised (n, c))]}``
    for the ``n_channels`` channels drawn at random (``seed``), sorted.
    """
    a = numpy.asarray(activations, numpy.float32)
    if a.ndim != 4:
        raise ValueError('activations must have shape (N, C, H, W), got %s' % (a.shape,))
    C = a.shape[1]
    points = numpy.ascontiguousarray(a.transpose(0, 2, 3, 1).reshape(-1, C))
    rs = numpy.random.RandomState(seed)
    channels = numpy.sort(rs.choice(C, size=min(int(n_channels), C), replace=False))
    mean, var = points.mean(axis=0), points.var(axis=0)
    bn = mixnorm.GMM(numpy.ones(1, numpy.float32), mean[None, :], var[None, :] + eps)
    methods = [('BN', bn, ((points[:, channels] - mean[channels])
                           / numpy.sqrt(var[channels] + eps)))]
    km, em = mixnorm.split_em_iters(em_iters)
    for k in ks:
        gmm = mixnorm.fit_gmm(points, k, km, em, seed=seed)
        resp = mixnorm.responsibilities(points, gmm)
        y = mixnorm.functions.mixture_normalization(points, None, None, resp, eps=eps).array
        methods.append(('MN:%d' % k, gmm, y[:, channels]))
    return {'channels': channels, 'raw': points[:, channels], 'methods': methods,
            'shape': a.shape}


def _hist(ax, v, color, bins=60):
    """Density histogram over the 0.1-99.9 percentile range (mass outside it is kept
    in the normalisation, so the bars compare with the fitted densities)."""
    lo, hi = numpy.percentile(v, [0.1, 99.9])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = numpy.histogram(v, bins=bins, range=(lo, hi))
    ax.stairs(counts / (len(v) * (edges[1] - edges[0])), edges, fill=True, color=color,
              alpha=0.55, linewidth=0)
    return lo, hi


def fig1(activations, out_dir=FIGURES_DIR, info=None, n_channels=4, seed=0, ks=(2, 3),
         em_iters=8, name='fig1'):
    """Figure 1 from activations (N, C, H, W); ``info`` from :func:`conv2_activations`
    (or ``{'label': ...}`` for a saved tensor).  Rows: BN / MN:K "before" (raw histogram,
    components dashed, p(x) solid) and "after" (normalised histogram, N(0, 1) dotted);
    one column per channel."""
    info = dict(info or {})
    data = fig1_data(activations, n_channels, seed, ks, em_iters)
    channels, raw = data['channels'], data['raw']
    N, C, H, W = data['shape']
    if 'snapshot' in info:
        what = ('conv2 input, %s %s run, epoch %s of %g, %d test images' % (
            info['row'], DATASET_TITLES.get(info['dataset'], info['dataset']),
            info['epoch'], info['epochs_planned'],
            info['n_images']))
        warning = warning_for([info['config']])
    else:
        what = 'activations from %s' % info.get('label', 'an array')
        warning = ('provenance not recorded (saved tensor): not comparable to the paper '
                   'unless it comes from a full CIFAR-100 run')
    methods = data['methods']
    with style():
        fig, axes = plt.subplots(2 * len(methods), len(channels),
                                 figsize=(2.5 * len(channels), 1.45 * 2 * len(methods)),
                                 squeeze=False)
        stats = []
        for j, c in enumerate(channels):
            x_raw = raw[:, j]
            for i, (mname, gmm, y) in enumerate(methods):
                ax_b, ax_a = axes[2 * i, j], axes[2 * i + 1, j]
                lo, hi = _hist(ax_b, x_raw, '0.6')
                xs = numpy.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 400)
                comps = component_marginals(gmm, c, xs)
                if gmm.n_components > 1:
                    for k, comp in enumerate(comps):
                        ax_b.plot(xs, comp, '--', linewidth=1.0,
                                  color=COMPONENT_COLORS[k % len(COMPONENT_COLORS)])
                ax_b.plot(xs, comps.sum(axis=0), color=DENSITY_COLOR, linewidth=1.5)
                p_raw = component_marginals(gmm, c, x_raw.astype(numpy.float64)).sum(0)
                ll = float(numpy.log(numpy.maximum(p_raw, 1e-300)).mean())
                lo_a, hi_a = _hist(ax_a, y[:, j], '#5c6bc0')
                za = numpy.linspace(min(lo_a, -3), max(hi_a, 3), 300)
                ax_a.plot(za, gaussian_pdf(za, 0.0, 1.0), ':', color='0.2', linewidth=1.0)
                sk = skewness(y[:, j])
                asked = int(mname.split(':')[1]) if ':' in mname else 1
                tag = mname if gmm.n_components == asked \
                    else "%s (K'=%d)" % (mname, gmm.n_components)
                ax_b.set_title('%s before: mean log p %.2f' % (tag, ll), loc='right',
                               fontsize=6.5, pad=2)
                ax_a.set_title('%s after: skew %.2f' % (mname, sk), loc='right',
                               fontsize=6.5, pad=2)
                for ax in (ax_b, ax_a):
                    ax.set_yticks([])
                    ax.grid(False)
                    ax.tick_params(labelsize=6.5)
                if i == 0:
                    ax_b.set_title('channel %d' % c, loc='left', fontsize=9,
                                   fontweight='bold', pad=2)
                stats.append({'channel': int(c), 'method': mname,
                              'components': gmm.n_components, 'mean_log_density': ll,
                              'skewness_after': sk, 'skewness_before': skewness(x_raw)})
        for i, (mname, _, _) in enumerate(methods):
            axes[2 * i, 0].set_ylabel('%s\nbefore' % mname, fontsize=8)
            axes[2 * i + 1, 0].set_ylabel('%s\nafter' % mname, fontsize=8)
        top = _header(fig, 'Figure 1: BN vs MN on %s' % what, warning)
        fig.text(0.5, -0.005, 'Grey: histogram of the conv output; teal: fitted p(x); '
                 'dashed: weighted mixture components (GMM fitted on all %d channels, '
                 '%d points, EM iter. %d);\nblue: normalised output (BN; MN Eq. 34-36, '
                 'no affine); dotted: N(0, 1). Our model, not the paper\'s.'
                 % (C, N * H * W, em_iters),
                 ha='center', va='top', fontsize=6.5, color='0.4')
        fig.tight_layout(rect=(0, 0, 1, top))
        files = save(fig, out_dir, name, {
            'figure': name, 'what': what, 'warning': warning, 'shape': [N, C, H, W],
            'channels': channels.tolist(), 'seed': seed, 'ks': list(ks),
            'em_iters': em_iters, 'stats': stats,
            'source': {k: v for k, v in info.items() if k != 'config'}})
    return FigureResult(name, files, warning=warning)


def find_snapshot(runs_root=records.RUNS_ROOT):
    """A snapshot for Figure 1: a CIFAR CNN run, preferring full runs, CIFAR-100 (the
    paper's), BN at conv2 (BN-2, BN-1, ...), seed 0; its snapshot nearest to midway
    through training (the paper: "in the midway of training").  None if there is none."""
    best = None
    for run in records.find_runs(runs_root):
        if run.config['model']['name'] != 'cifar_cnn':
            continue
        snaps = [p for p in os.listdir(run.path) if re.fullmatch(r'snapshot_epoch_\d+', p)]
        if not snaps:
            continue
        row = run.config['row']
        mn_conv2 = 'conv2' in ((run.config.get('mn') or {}).get('layers') or [])
        key = (bool(not_comparable_reasons(run.config)), paper_dataset(run) != 'cifar100',
               mn_conv2, row != 'BN-2', row, run.config['train']['seed'], run.path)
        half = run.config['train']['epochs'] / 2.0
        snap = min(snaps, key=lambda p: (abs(int(p.rsplit('_', 1)[1]) - half),
                                         int(p.rsplit('_', 1)[1])))
        if best is None or key < best[0]:
            best = (key, os.path.join(run.path, snap))
    return best[1] if best else None


def fig1_from_snapshot(snapshot, out_dir=FIGURES_DIR, run_dir=None, n_images=128, seed=0,
                       data_dir=None, **kwargs):
    acts, info = conv2_activations(snapshot, run_dir, n_images, seed, data_dir)
    return fig1(acts, out_dir, info, seed=seed, **kwargs)


def fig1_from_file(path, out_dir=FIGURES_DIR, **kwargs):
    return fig1(load_activations(path), out_dir, {'label': os.path.basename(path)},
                **kwargs)


# --------------------------------------------------------------------------- all

def fig1_commands(runs_root=None):
    """The commands that make a snapshot for Figure 1 and draw it."""
    default = not runs_root or os.path.abspath(runs_root) == os.path.abspath(records.RUNS_ROOT)
    root = os.path.join('results', 'runs') if default else runs_root
    return [reproduce_command('cifar100', ['BN-2'], None if default else runs_root),
            'python scripts/figures.py fig1 --snapshot %s' % os.path.join(
                root, 'table2', 'cifar100', 'BN-2', 'seed0', 'snapshot_epoch_50')]


def dcgan_figures(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR):
    """Figures 6 and 7 from the DCGAN runs under ``runs_root`` (drawn by
    :mod:`experiments.gan`); comparable runs are preferred over smoke runs."""
    from experiments import gan
    groups = {}
    for run in records.find_runs(runs_root, experiment='dcgan'):
        if run.summary is not None:
            groups.setdefault(run.config['row'], []).append(run)
    chosen = {}
    for row in ('DCGAN-BN', 'DCGAN-MN'):
        runs = groups.get(row, [])
        full = [r for r in runs if r.summary.get('comparable_to_paper')]
        chosen[row] = [r.path for r in (full or runs)]
    missing = [('cifar10', row) for row, paths in chosen.items() if not paths]
    if missing:
        command = 'python scripts/reproduce.py dcgan --inception-weights fid.npz%s' % (
            '' if os.path.abspath(runs_root) == os.path.abspath(records.RUNS_ROOT)
            else ' --runs-root %s' % runs_root)
        return [FigureResult(name, [], missing, [command]) for name in ('fig6', 'fig7')]
    bn, mn = chosen['DCGAN-BN'], chosen['DCGAN-MN']
    return [FigureResult('fig6', gan.figure6(bn, mn, out_dir, name='fig6')),
            FigureResult('fig7', gan.figure7(bn[0], mn[0], out_dir, name='fig7'))]


def all_figures(runs_root=records.RUNS_ROOT, out_dir=FIGURES_DIR, data_dir=None,
                n_images=128, log=print):
    """Every figure whose runs exist (Figures 2, 3, 1, 4, 5, 8, 9, 6, 7, in that order);
    prints (``log``) what was written and, for what is missing, the runs and the
    commands that make them.  Figure 1 uses the snapshot of :func:`find_snapshot` and
    ``n_images`` test images; Figure 8 the run of :func:`find_mixture_run`.  Returns
    [FigureResult]."""
    results = []
    for fn in (fig2, fig3):
        results.append(fn(runs_root, out_dir))
    snap = find_snapshot(runs_root)
    if snap is None:
        results.append(FigureResult('fig1', [], [('cifar100', 'BN-2')],
                                    fig1_commands(runs_root),
                                    notes=['no CIFAR CNN snapshot under %s' % runs_root]))
    else:
        try:
            results.append(fig1_from_snapshot(snap, out_dir, data_dir=data_dir,
                                              n_images=n_images))
        except (FileNotFoundError, ValueError) as e:
            results.append(FigureResult('fig1', [], [], [], notes=[
                'from %s: %s' % (snap, e)]))
    for fn in (fig4, fig5):
        results.append(fn(runs_root, out_dir))
    try:
        results.append(fig8(runs_root, out_dir))
    except (FileNotFoundError, ValueError) as e:
        results.append(FigureResult('fig8', [], [], [], notes=[str(e)]))
    results.append(fig9(runs_root, out_dir))
    results += dcgan_figures(runs_root, out_dir)
    for r in results:
        log(report(r))
    return results


def report(r):
    """Text lines describing a :class:`FigureResult`."""
    lines = []
    if r.rendered:
        lines.append('%s: wrote %s' % (r.name, ', '.join(r.files)))
        if r.warning:
            lines.append('  note: %s' % r.warning)
        if r.missing:
            lines.append('  incomplete, missing runs: %s' % ', '.join(
                '%s %s' % k for k in r.missing))
    else:
        lines.append('%s: MISSING%s' % (r.name, ' - no runs of %s' % ', '.join(
            '%s %s' % k for k in r.missing) if r.missing else ''))
    lines += ['  %s' % n for n in r.notes]
    if r.commands:
        lines.append('  make them with:')
        lines += ['    %s' % c for c in r.commands]
        lines.append('  (quick offline demo: add --preset smoke --synthetic to reproduce.py%s, '
                     'then rerun `python scripts/figures.py all`; such figures are marked not '
                     'comparable)' % (' or --preset smoke --set data.dataset=synthetic to '
                                      'experiments.train' if any(
                                          'experiments.train' in c for c in r.commands)
                                      else ''))
    return '\n'.join(lines)
