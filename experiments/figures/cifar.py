"""Figures 2 and 3: test error of the CIFAR CNN (Table 2 runs) against epoch.

* Figure 2 (:func:`fig2`): CIFAR-10 and CIFAR-100, small learning-rate regime (rows 1,
  2: lr 0.01) and large (rows 3, 4: lr 0.05); BN dashed, MN solid, one colour per weight
  decay.  The curve is the mean over the seeds found; the shaded band is +-1 standard
  deviation of that curve within a sliding window of 10 epochs (the paper's caption:
  "one standard deviation computed within a window of 10 epochs"), see
  :func:`experiments.figures.curves.windowed_std`.
* Figure 3 (:func:`fig3`): CIFAR-100; left, the number of EM iterations (BN-2, MN-2 = 2,
  MN-5 = 4, MN-6 = 8); right, where MN sits (BN-2, MN-2 conv3, MN-7 conv2, MN-8 conv2 +
  conv3).
"""
from experiments import rundir
from experiments.figures.curves import WINDOW, curve_figure, row_label
from experiments.figures.output import FIGURES_DIR
from experiments.figures.style import BN_STYLE, DATASET_TITLES, MN_STYLE, PAIR_COLORS


def fig2(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
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
    return curve_figure('fig2', 'Figure 2: test error of the CIFAR CNN (Table 2 runs), '
                        'BN dashed, MN solid', panels, runs_root, out_dir, window, ncols=2)


def fig3(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
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
    return curve_figure('fig3', 'Figure 3: CIFAR CNN on CIFAR-100 (Table 2 runs)',
                        panels, runs_root, out_dir, window, ncols=2)
