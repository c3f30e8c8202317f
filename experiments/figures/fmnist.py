"""Table 2's BN and MN rows on Fashion-MNIST (real images, not the paper's data): test
error against epoch, measured twice on the same test images (:func:`fig_fmnist`):

* with the inference statistics (BN's running averages, MN's queue of mixtures): the
  paper's metric;
* with each test batch's own statistics (the training-mode normalization), which is
  what the network has learned without the lag of the inference statistics.

Rows 2 (lr 0.01) and 4 (lr 0.05), BN dashed, MN solid, a panel per row and per kind of
statistics.  The curve is the mean over the seeds found; with ``window`` > 1 a band of
+-1 standard deviation within a sliding window of epochs (as in Figure 2) is drawn, by
default not (the CPU preset's runs have 4 epochs, too few for such a band).  The title says that the
runs are not comparable to the paper; a BN and an MN curve of one panel are (the same
data, preset and length: :func:`experiments.verdict.Assessment.comparable_with`).
"""
from experiments import rundir
from experiments.figures.curves import Panel, curve_figure, row_label
from experiments.figures.output import FIGURES_DIR
from experiments.figures.style import BN_STYLE, MN_STYLE, PAIR_COLORS, ROW_COLORS

DATASET = 'fashion-mnist'
WINDOW = 1


def fig_fmnist(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW,
               rows=(2, 4)):
    """BN vs MN of Table 2 ``rows`` on Fashion-MNIST, with inference and with batch
    statistics."""
    panels = []
    for metric, what in (('test_error', 'inference statistics (the paper\'s metric)'),
                         ('test_error_batchstats', 'batch statistics')):
        for i in rows:
            curves = [('%s-%d' % (kind, i), row_label(DATASET, '%s-%d' % (kind, i), 'lr_wd'),
                       PAIR_COLORS[0] if kind == 'BN' else PAIR_COLORS[1], line)
                      for kind, line in (('BN', BN_STYLE), ('MN', MN_STYLE))]
            panels.append(Panel('Fashion-MNIST, row %d: %s' % (i, what), DATASET, curves,
                                metric=metric))
    return curve_figure(
        'fmnist', 'Table 2 rows on Fashion-MNIST (real images, NOT the paper\'s '
        'CIFAR): BN dashed, MN solid', panels, runs_root, out_dir, window, ncols=len(rows),
        footer='Our runs only. Top: test error with the inference statistics (BN running '
               'averages, MN queue); bottom: the same test images,\neach batch normalized '
               'by its own statistics. Line: mean over seeds%s.\nBN and MN of a panel were '
               'trained the same way on the same data and are comparable with each other.'
               % ('; band: +-1 std within a %d-epoch window' % window if window > 1 else ''),
        panel_size=(5.2, 3.6))


CONVERTED_STYLE = dict(linestyle=':', linewidth=1.8)
#: (row, label, colour, line) of the placement figure's Table 2 panels.
PLACEMENT_ROWS = [
    ('BN-2', 'BN-2 (BN everywhere)', ROW_COLORS[0], BN_STYLE),
    ('MN-2', 'MN-2 (MN at conv3, the paper)', ROW_COLORS[3], MN_STYLE),
    ('MN-2-running', 'MN-2, BN\'s inference (running averages)', ROW_COLORS[1], MN_STYLE),
    ('MN-2-all', 'MN everywhere (conv1-conv4)', ROW_COLORS[2], MN_STYLE),
    ('MN-2-all-nols', 'MN everywhere, lambda_scaling=False', '#17becf', MN_STYLE),
    ('MN-2-convert-K1', 'BN, converted at epoch 4 to MN K=1', ROW_COLORS[4], CONVERTED_STYLE),
    ('MN-2-convert-K3', 'BN, converted at epoch 4 to MN K=3', '#8c564b', CONVERTED_STYLE),
    ('MN-2-convert-K3-nols', 'BN, converted at epoch 4 to MN K=3, lambda_scaling=False',
     '#bcbd22', CONVERTED_STYLE),
]
#: the same for DenseNet-40 (the preset fmnist-cpu-densenet)
PLACEMENT_DENSENET = [
    ('BN-L40', 'BN-L40', ROW_COLORS[0], BN_STYLE),
    ('MN-L40', 'MN-L40 (transitions and last BN, the paper)', ROW_COLORS[3], MN_STYLE),
    ('MN-L40-all', 'MN everywhere (all 39 BNs)', ROW_COLORS[2], MN_STYLE),
    ('MN-L40-all-nols', 'MN everywhere, lambda_scaling=False', '#17becf', MN_STYLE),
]


def fig_fmnist_placement(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, window=WINDOW):
    """Where MN belongs, on Fashion-MNIST: the CIFAR CNN's row 2 with MN at the paper's
    layer, everywhere, with BN's inference, and BN converted to MN half-way (K = 1 and
    K = 3); DenseNet-40 with MN at the paper's layers and everywhere.  Both kinds of
    test statistics."""
    panels = []
    for metric, what in (('test_error', 'inference statistics'),
                         ('test_error_batchstats', 'batch statistics')):
        panels.append(Panel('CIFAR CNN, row 2: %s' % what, DATASET, PLACEMENT_ROWS,
                            metric=metric))
        panels.append(Panel('DenseNet-40 (fmnist-cpu-densenet): %s' % what, DATASET,
                            PLACEMENT_DENSENET, experiment='densenet', metric=metric))
    return curve_figure(
        'fmnist_placement', 'Where MN belongs, on Fashion-MNIST (real images, NOT the '
        'paper\'s CIFAR)', panels, runs_root, out_dir, window, ncols=2,
        footer='Our runs only, CPU-sized presets (fmnist-cpu: 64 updates of 256 images; '
               'fmnist-cpu-densenet: 48 updates of 16). Top: test error with the\n'
               'inference statistics; bottom: each test batch normalized by its own '
               'statistics. Line: mean over seeds. The curves of a panel were trained\n'
               'the same way on the same data and are comparable with each other.',
        panel_size=(6.0, 3.8))
