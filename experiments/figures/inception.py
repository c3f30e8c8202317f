"""Figures 4, 8 and 9: Inception-V3 on CIFAR (Table 4 and 6 runs, Sec. 4.3 and 5.2).

* Figure 4 (:func:`fig4`): Inception-V3 test error against epoch, as Figure 2: (a)
  CIFAR-10 and (b) CIFAR-100 small learning rate (Table 4 BN-1 and MN rows), (c)
  CIFAR-100 large learning rate (BN-5, MN-5), (d) CIFAR-100 with Nesterov and two lr
  drop policies (Table 6 rows).
* Figure 8 (:func:`fig8`): the fitted mixture of "inc2/0/2/4" saved by
  ``train.save_mixtures`` at 20/40/60/80/100% of training (Table 4 CIFAR-100 MN-4):
  rows = saved iterations, columns = random channels, the weighted component densities
  lambda_k N(x; mu_kc, var_kc) coloured by the rank of lambda_k.
* Figure 9 (:func:`fig9`): the effective number of mixture components (``mn/<layer>/
  components`` in log.json) of every MN module of "inc2/0" and "inc3/0" against epoch,
  Table 4 MN-4 on CIFAR-10 and CIFAR-100, running average with a +-1 std band.
"""
import glob
import os
import re

import matplotlib
import matplotlib.lines
import matplotlib.ticker
import numpy

from experiments import rundir
from experiments.runs import Run
from experiments.figures import output, selection
from experiments.figures.curves import (
    WINDOW, Panel, curve_figure, gaussian_pdf, metric_curve, on_epoch_grid, row_label,
    windowed_mean, windowed_std)
from experiments.figures.output import FIGURES_DIR, FigureResult
from experiments.figures.style import (
    BN_STYLE, COMPONENT_COLORS, DATASET_TITLES, MN_STYLE, PAIR_COLORS, ROW_COLORS, header,
    plt, style)


# ----------------------------------------------------------------------- Figure 4

def fig4(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
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
    return curve_figure(
        'fig4', 'Figure 4: test error of Inception-V3 (Table 4 runs; (d) Table 6 runs), '
        'BN dashed, MN solid', panels, runs_root, out_dir, window, ncols=2,
        panel_size=(5.6, 3.9))


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


def find_mixture_run(runs_root=rundir.RUNS_ROOT, layer=MIXTURE_LAYER, dataset='cifar100',
                     row='MN-4', experiment='table4'):
    """(run with saved mixtures of ``layer`` or None, [runs of the row without them]):
    the paper-setting run if any, else the kind with the fewest reasons not to compare
    (real data before synthetic), lowest seed."""
    runs = selection.collect_runs(runs_root, experiment).get((dataset, row), [])
    with_mix = [r for r in runs if mixture_files(r.path, layer)]
    without = [r for r in runs if r not in with_mix]
    if not with_mix:
        return None, without
    best = min(with_mix, key=lambda r: (selection.preference(r),
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
    run = Run(run_dir)
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


def fig8(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, run_dir=None,
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
            commands = [selection.reproduce_command('cifar100', ['MN-4'], runs_root,
                                                    'table4')]
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
    ds = selection.paper_dataset(run) or cfg['data']['dataset']
    warning = selection.warning_for([run])
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
        top = header(fig, title, warning)
        fig.legend(handles, labels, loc='lower center', ncol=K, fontsize=7,
                   bbox_to_anchor=(0.5, -0.005))
        fig.text(0.5, -0.035, 'Weighted component densities λ_k N(x; μ_kc, σ²_kc) of the '
                 'mixture fitted at each saved iteration (train.save_mixtures), coloured by '
                 'the rank of '
                 'λ_k. Our run, not the paper\'s.', ha='center', va='top', fontsize=6.5,
                 color='0.4')
        fig.tight_layout(rect=(0, 0.03, 1, top))
        files = output.save(fig, out_dir, name, {
            'figure': name, 'title': title, 'warning': warning, 'run': run.path,
            'layer': layer, 'seed': seed, 'channels': channels.tolist(),
            'n_channels_total': data['n_channels_total'],
            'planned_iterations': total, 'rows': rows_json,
            'not_comparable': selection.comparability(run)[1]})
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


def fig9(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW, row='MN-4',
         prefixes=FIG9_PREFIXES):
    """Figure 9: effective number of mixture components K' (``mn/<path>/components``, the
    epoch average LogReport writes) against epoch for every MN module under ``prefixes``
    (inc2/0 and inc3/0: 10 modules; every MN module if none is there), one panel per
    dataset (CIFAR-10, CIFAR-100), Table 4 ``row``; the line is the running average over
    ``window`` epochs, the band +-1 std in the same window."""
    name = 'fig9'
    all_runs = selection.collect_runs(runs_root, 'table4')
    datasets = ('cifar10', 'cifar100')
    picked = {ds: selection.pick_runs(all_runs.get((ds, row), [])) for ds in datasets}
    notes, missing = [], []
    for ds in datasets:
        runs = picked[ds]
        if runs and not any(component_keys(r.log) for r in runs):
            notes.append('%s %s runs log no mn/<layer>/components (not an MN row?)'
                         % (ds, row))
            picked[ds] = []
        if not picked[ds]:
            missing.append((ds, row))
    commands = [selection.reproduce_command(ds, [r], runs_root, 'table4')
                for ds, r in missing]
    if len(missing) == len(datasets):
        return FigureResult(name, [], missing, commands, notes=notes)
    with style():
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.4 * len(datasets), 3.8),
                                 squeeze=False)
        used, drawn = [], []
        for ax, ds, letter in zip(axes[0], datasets, 'ab'):
            runs = picked[ds]
            ptitle = '(%s) %s, %s' % (letter, DATASET_TITLES[ds], row)
            if not runs:
                ax.set_title(ptitle)
                ax.set_xticks([])
                ax.set_yticks([])
                command = selection.reproduce_command(ds, [row], runs_root, 'table4')
                ax.text(0.02, 0.5, 'no run of %s on %s; make it with\n%s' % (
                    row, DATASET_TITLES[ds], command.replace(' --dataset', '\n    --dataset')),
                    transform=ax.transAxes, fontsize=6, color='0.35', va='center',
                    family='monospace')
                continue
            drawn += runs
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
                             'not_comparable': selection.comparability(runs[0])[1]})
            ax.axhline(K, color='0.5', linestyle=':', linewidth=1.0)
            ax.set_ylim(0.5, K + 0.5)
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_title(ptitle + ', K = %d' % K)
            ax.set_xlabel('epoch')
            ax.set_ylabel("effective number of components K'")
            ax.legend(loc='lower left', ncol=2, fontsize=6.5)
        warning = selection.warning_for(drawn)
        title = ('Figure 9: mixture components used by the MN modules of %s, Inception-V3 '
                 '(Table 4 %s)' % (' and '.join(prefixes), row))
        top = header(fig, title, warning)
        fig.text(0.5, -0.01, "Our runs only. K' = components kept after discarding those "
                 'with weight < min_weight, averaged over each epoch (and over seeds); line: '
                 'running average over %d epochs, band: +-1 std in the same window.'
                 % window, ha='center', va='top', fontsize=7, color='0.4')
        fig.tight_layout(rect=(0, 0, 1, top))
        files = output.save(fig, out_dir, name, {
            'figure': name, 'title': title, 'warning': warning, 'window': window,
            'row': row, 'prefixes': list(prefixes), 'runs_root': os.path.abspath(runs_root),
            'curves': used, 'notes': notes, 'missing': ['%s %s' % k for k in missing],
            'commands': commands})
    return FigureResult(name, files, missing, commands, warning, notes)

