"""Figure 5: DenseNet (k = 12) on CIFAR-100, BN vs MN at L = 40 and 100 (Sec. 4.4):
training error, training cross-entropy, test error and test cross-entropy against
epoch; band +-1 std within a 3-epoch window (the paper's caption)."""
from experiments import rundir
from experiments.figures.curves import METRICS, Panel, curve_figure
from experiments.figures.output import FIGURES_DIR
from experiments.figures.style import BN_STYLE, DEPTH_COLORS, MN_STYLE

DENSENET_WINDOW = 3          # Figure 5's caption: "computed within a window of 3 epochs"


def fig5(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=DENSENET_WINDOW):
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
    return curve_figure('fig5', 'Figure 5: DenseNet (k=12) on CIFAR-100, BN dashed, MN '
                        'solid', panels, runs_root, out_dir, window, ncols=2,
                        footer=footer, hint_panels=(0,), panel_size=(4.8, 3.4))
