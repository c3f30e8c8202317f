"""Figures 6 and 7: DCGAN-BN vs DCGAN-MN on CIFAR-10 (Sec. 4.5), from our DCGAN runs.

* Figure 6 (:func:`fig6`): FID against generator updates, the mean over the runs of each
  row, shaded +-1 std within 3 adjacent evaluations; BN's lowest FID dotted; the paper's
  numbers under the plot.
* Figure 7 (:func:`fig7`): the sample grids of DCGAN-BN (a) and DCGAN-MN (b) at their
  lowest evaluated FID (the last grid when a run has no FID).

The runs are given by directory or picked under ``runs_root``
(:func:`experiments.figures.selection.pick_runs`).  The FID curves are read with
:func:`experiments.metrics.fid_curve`, the sample grids found with
:mod:`experiments.gan`'s helpers; with a random-weights network the axis says "NOT FID".
"""
import glob
import os

import numpy
from PIL import Image

from experiments import gan as gan_lib
from experiments import metrics, paper, rundir
from experiments.figures import output, selection
from experiments.figures.curves import windowed_std
from experiments.figures.output import FIGURES_DIR, FigureResult
from experiments.figures.style import BN_STYLE, GAN_COLORS, MN_STYLE, header, plt, style

ROWS = ('DCGAN-BN', 'DCGAN-MN')
LINE_STYLES = {'DCGAN-BN': BN_STYLE, 'DCGAN-MN': MN_STYLE}
FID_WINDOW = 3               # adjacent FID evaluations in the std window of Figure 6


def dcgan_command(runs_root=None):
    """The command that makes the DCGAN runs."""
    return 'python scripts/reproduce.py dcgan --inception-weights fid.npz%s' % (
        selection.runs_root_option(runs_root))


def dcgan_runs(runs_root=rundir.RUNS_ROOT, given=None):
    """{row: [Run]} for DCGAN-BN and DCGAN-MN: the run directories ``given`` {row:
    paths (a list or comma-separated)} where given, else the runs of the row picked
    under ``runs_root``."""
    found, out = None, {}
    for row in ROWS:
        paths = (given or {}).get(row)
        if paths:
            out[row] = selection.read_runs(paths, 'dcgan')
            wrong = [r.path for r in out[row] if r.config.get('row') != row]
            if wrong:
                raise ValueError('given as %s runs, but not of that row: %s'
                                 % (row, ', '.join(wrong)))
            continue
        if found is None:
            found = selection.collect_runs(runs_root, 'dcgan')
        out[row] = selection.pick_runs(found.get(('cifar10', row), []), reports='gen/loss')
    return out


def _missing(name, runs, runs_root):
    """The FigureResult of a figure whose rows have no runs (None if all have)."""
    missing = [('cifar10', row) for row in ROWS if not runs[row]]
    if missing:
        return FigureResult(name, [], missing, [dcgan_command(runs_root)])
    return None


def mean_fid_curve(runs):
    """(steps, mean FID) over the evaluation steps every run of ``runs`` reached."""
    curves = [dict(metrics.fid_curve(r.log)) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return steps, [float(numpy.mean([c[s] for c in curves])) for s in steps]


def fid_labels(runs):
    """The FID networks the runs recorded (their ``fid_label``s)."""
    return sorted({(r.summary or {}).get('fid_label') or '' for r in runs} - {''})


def _kilo_steps(all_steps):
    """(unit, suffix) for the x axis: thousands of updates from 1000 on."""
    return (1000.0, 'K') if all_steps and max(all_steps) >= 1000 else (1.0, '')


def fig6(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, bn_runs=None, mn_runs=None,
         name='fig6'):
    """Figure 6: FID against generator updates for DCGAN-BN and DCGAN-MN (the mean over
    ``bn_runs`` / ``mn_runs``, default the runs under ``runs_root``), shaded +-1 std
    within 3 adjacent evaluations; BN's lowest FID dotted."""
    runs = dcgan_runs(runs_root, {'DCGAN-BN': bn_runs, 'DCGAN-MN': mn_runs})
    missing = _missing(name, runs, runs_root)
    if missing:
        return missing
    every = runs['DCGAN-BN'] + runs['DCGAN-MN']
    warning = selection.warning_for(every)
    labels = fid_labels(every)
    random_w = any(gan_lib.NOT_FID in label for label in labels)
    unit, suffix = _kilo_steps([s for r in every for s, _ in metrics.fid_curve(r.log)])
    title = 'Figure 6: FID of DCGAN on CIFAR-10 (ours), BN dashed, MN solid'
    with style():
        fig, ax = plt.subplots(figsize=(5.6, 3.9))
        info = {}
        for row in ROWS:
            steps, values = mean_fid_curve(runs[row])
            info[row] = {'runs': [r.path for r in runs[row]], 'steps': steps, 'fid': values}
            if not steps:
                continue
            extra = ['%d runs' % len(runs[row])] if len(runs[row]) > 1 else []
            planned = max(selection.planned_length(r) for r in runs[row])
            if steps[-1] < planned:
                extra.append('%g/%g%s updates' % (steps[-1] / unit, planned / unit, suffix))
            k = numpy.asarray(steps) / unit
            std = windowed_std(values, FID_WINDOW)
            low = int(numpy.argmin(values))
            ax.plot(k, values, color=GAN_COLORS[row], marker='o', markersize=2.5,
                    label='%s (lowest %.2f @ %g%s)%s' % (
                        row, values[low], steps[low] / unit, suffix,
                        ' [%s]' % ', '.join(extra) if extra else ''), **LINE_STYLES[row])
            ax.fill_between(k, numpy.asarray(values) - std, numpy.asarray(values) + std,
                            color=GAN_COLORS[row], alpha=0.2, linewidth=0)
        if info['DCGAN-BN']['fid']:
            ax.axhline(min(info['DCGAN-BN']['fid']), color='gray', linewidth=0.8,
                       linestyle=':')
        ax.set_xlabel('generator updates%s' % (' (K)' if suffix else ''))
        ax.set_ylabel('random-weights "FID" (NOT FID)' if random_w else 'FID')
        ax.legend(fontsize=7)
        top = header(fig, title, warning)
        ref = paper.rows('sections', 'cifar10')['dcgan']
        footer = ['Our runs only. Line: mean FID over runs; band: +-1 std of %d adjacent '
                  'evaluations. Paper (Sec. 4.5): BN lowest %.2f @ %dK; MN lowest %.2f; MN '
                  'reaches %.2f @ %dK.' % (
                      FID_WINDOW, ref['bn_lowest_fid'], ref['bn_steps_to_lowest_fid'] // 1000,
                      ref['mn_lowest_fid'], ref['bn_lowest_fid'],
                      ref['mn_steps_to_reach_bn_lowest_fid'] // 1000)]
        if labels:
            footer.append('FID network: ' + '; '.join(labels))
        fig.text(0.5, -0.01, '\n'.join(footer), ha='center', va='top', fontsize=6.5,
                 color='0.4')
        fig.tight_layout(rect=(0, 0, 1, top))
        files = output.save(fig, out_dir, name, {
            'figure': name, 'title': title, 'warning': warning, 'curves': info,
            'fid_labels': labels, 'band': 'std of %d adjacent evaluations (centred, '
            'clipped at the ends)' % FID_WINDOW})
    return FigureResult(name, files, warning=warning)


def best_samples(run):
    """(path of the sample grid, what it shows) of ``run``: the grid at its lowest
    evaluated FID, else its last grid; (None, 'no samples') if it has none."""
    curve = metrics.fid_curve(run.log)
    if curve:
        step, value = metrics.lowest_fid(curve)
        random_w = gan_lib.NOT_FID in str((run.summary or {}).get('fid_label'))
        return gan_lib.sample_path(run.path, step), '%s %.2f at %d updates' % (
            'random-weights "FID"' if random_w else 'FID', value, step)
    grids = sorted(glob.glob(os.path.join(run.path, gan_lib.SAMPLES_DIR, 'step_*.png')))
    if grids:
        return grids[-1], 'no FID; last samples'
    return None, 'no samples'


def fig7(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, bn_run=None, mn_run=None,
         name='fig7'):
    """Figure 7: the sample grids of DCGAN-BN (a) and DCGAN-MN (b) (``bn_run`` /
    ``mn_run``, default the first run of each row under ``runs_root``) at their lowest
    evaluated FID."""
    runs = dcgan_runs(runs_root, {'DCGAN-BN': bn_run, 'DCGAN-MN': mn_run})
    missing = _missing(name, runs, runs_root)
    if missing:
        return missing
    shown = [runs[row][0] for row in ROWS]
    warning = selection.warning_for(shown)
    title = 'Figure 7: DCGAN samples at the lowest evaluated FID (ours)'
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.6))
        info = {}
        for ax, run, tag in zip(axes, shown, ('(a) DCGAN-BN', '(b) DCGAN-MN')):
            path, what = best_samples(run)
            info[tag] = {'run': run.path, 'image': path, 'what': what}
            if path and os.path.exists(path):
                ax.imshow(numpy.asarray(Image.open(path)))
            ax.set_title('%s\n%s' % (tag, what), fontsize=8)
            ax.axis('off')
        top = header(fig, title, warning)
        fig.tight_layout(rect=(0, 0, 1, top))
        files = output.save(fig, out_dir, name, {'figure': name, 'title': title,
                                                 'warning': warning, 'panels': info})
    return FigureResult(name, files, warning=warning)
