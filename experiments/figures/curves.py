"""Curves from run logs and the curve figures built on them (Figures 2-5).

The numbers: a LogReport value against epoch, averaged over the seeds that reached each
epoch (:func:`metric_curve`), and the band of the paper's captions, one standard
deviation within a sliding window of epochs (:func:`windowed_std`).  The drawing: a
figure of :class:`Panel` s, one curve per table row, BN dashed and MN solid
(:func:`curve_figure`), with the missing rows named in their panel and the commands
that make them.
"""
import dataclasses
import math
import os

import matplotlib.ticker
import numpy

from experiments import config as config_lib
from experiments import metrics
from experiments.figures import output, selection
from experiments.figures.style import header, plt, style

WINDOW = 10                  # epochs in the std window of Figure 2 (paper's caption)


# ----------------------------------------------------------------------- numbers

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
    return metric_curve(logs, metrics.TEST_ACC, _error_percent)


# What a curve panel can show: name -> (LogReport key, transform, axis label).
METRICS = {
    'test_error': (metrics.TEST_ACC, _error_percent, 'test error (%)'),
    # the same test set, each test batch normalized by its own statistics
    # (experiments.train.BatchStatisticsEvaluator)
    'test_error_batchstats': ('validation_batchstats/main/accuracy', _error_percent,
                              'test error (%), batch statistics'),
    'test_loss': (metrics.TEST_LOSS, None, 'test cross-entropy'),
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


def windowed_mean(y, window=WINDOW):
    """Running average of ``y`` over the same centred window as :func:`windowed_std`
    (NaNs ignored; NaN where the window holds no finite value)."""
    return numpy.array([w.mean() if len(w) else numpy.nan
                        for w in _finite_windows(y, window)])


def on_epoch_grid(epochs, values):
    """Values on the contiguous grid 1..max(epochs) (NaN where an epoch is missing), so
    that the window of :func:`windowed_std` spans epochs, not log entries."""
    grid = numpy.arange(1, int(epochs.max()) + 1) if len(epochs) else numpy.arange(0)
    full = numpy.full(grid.shape, numpy.nan)
    full[epochs - 1] = values
    return grid, full


def gaussian_pdf(x, mean, var):
    """N(x; mean, var), elementwise."""
    return numpy.exp(-0.5 * (x - mean) ** 2 / var) / numpy.sqrt(2 * math.pi * var)


# ------------------------------------------------------------------------ labels

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


# ----------------------------------------------------------------- curve figures

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
    ``used`` (json records) and ``missing``; returns the runs drawn."""
    key, transform, _ = METRICS[metric]
    drawn = []
    for row, label, color, line in curves:
        runs = selection.pick_runs(all_runs.get((dataset, row), []))
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
        drawn += runs
        rec = {'dataset': dataset, 'row': row, 'label': name,
               'runs': [r.path for r in runs],
               'seeds': [r.config['train']['seed'] for r in runs],
               'epochs': epochs.tolist(), metric: mean.round(4).tolist(),
               'seeds_per_epoch': count.tolist(),
               'windowed_std': band[epochs - 1].round(4).tolist(),
               'not_comparable': selection.comparability(runs[0])[1]}
        if experiment != 'table2' or metric != 'test_error':
            rec.update(experiment=experiment, metric=metric)
        used.append(rec)
    return drawn


def missing_hint(missing, experiment):
    """The in-panel note naming the missing rows and (briefly: no --runs-root / --out,
    which the printed report and the JSON sidecar give in full) the commands."""
    names = ', '.join(row for _, row in missing)
    if experiment in selection.TRAIN_COMMAND_EXPERIMENTS:
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
                hint or missing_hint(missing, 'table2'),
                transform=ax.transAxes, fontsize=6, color='0.35',
                va='bottom' if drawn else 'center', family='monospace')


def curve_figure(name, title, panels, runs_root, out_dir, window, ncols, footer=None,
                 hint_panels=None, panel_size=(4.6, 3.4)):
    """Shared body of Figures 2-5: ``panels`` [:class:`Panel` or (panel title, dataset,
    curves)].  ``hint_panels``: indices of the panels that print the commands of their
    missing runs (default all)."""
    panels = [_as_panel(p) for p in panels]
    all_runs = {exp: selection.collect_runs(runs_root, exp)
                for exp in dict.fromkeys(p.experiment for p in panels)}
    planned = []
    for p in panels:
        for row, *_ in p.curves:
            if (p.experiment, p.dataset, row) not in planned:
                planned.append((p.experiment, p.dataset, row))
    present = [k for k in planned if selection.pick_runs(all_runs[k[0]].get(k[1:], []))]
    missing_keys = [k for k in planned if k not in present]
    missing = list(dict.fromkeys(k[1:] for k in missing_keys))
    commands = selection.commands_for_runs(missing_keys, runs_root)
    if not present:
        return output.FigureResult(name, [], missing, commands)
    nrows = int(math.ceil(len(panels) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols,
                                                         panel_size[1] * nrows),
                                 squeeze=False)
        used, drawn = [], []
        for i, (ax, p) in enumerate(zip(axes.flat, panels)):
            panel_missing = []
            drawn += _draw_curves(ax, all_runs[p.experiment], p.dataset, p.curves, window,
                                  used, panel_missing, p.metric, p.experiment)
            show = hint_panels is None or i in hint_panels
            _finish_axes(ax, p.title, len(panel_missing) < len(p.curves),
                         panel_missing if show else [], METRICS[p.metric][2],
                         missing_hint(panel_missing, p.experiment)
                         if panel_missing and show else None)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        warning = selection.warning_for(drawn)
        top = header(fig, title, warning)
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
        files = output.save(fig, out_dir, name, sources)
    return output.FigureResult(name, files, missing, commands, warning)
