"""The one look of every figure: matplotlib's file backend and rc settings, the colours
and line styles (BN dashed, MN solid), and the title block with the notice of runs not
comparable to the paper."""
import textwrap

import matplotlib
matplotlib.use('Agg')            # files only; importing the figures never needs a display
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported for the figure modules)

DATASET_TITLES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100',
                  'fashion-mnist': 'Fashion-MNIST (not the paper\'s data)'}

BN_STYLE = dict(linestyle='--', linewidth=1.3)
MN_STYLE = dict(linestyle='-', linewidth=1.6)
DENSITY_COLOR = '#00897b'    # the paper's "solid teal curve" (Figure 1)
COMPONENT_COLORS = ('#e53935', '#1e88e5', '#fb8c00', '#8e24aa', '#43a047')
PAIR_COLORS = ('#1f77b4', '#d62728')   # weight decay 1e-4 / 2e-5 (rows 1, 3 / 2, 4)
ROW_COLORS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd')
DEPTH_COLORS = {40: '#1f77b4', 100: '#d62728'}
GAN_COLORS = {'DCGAN-BN': '#1f77b4', 'DCGAN-MN': '#d62728'}
WARN_COLOR = '#c62828'


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


#: Characters of the bold 9-point notice per inch of figure width.
_NOTICE_CHARS_PER_INCH = 13


def header(fig, title, warning=None):
    """Bold title (and the red not-comparable notice under it, wrapped to the figure's
    width) at the top of ``fig``; returns the figure fraction left for the axes
    (``rect`` top of tight_layout)."""
    height = fig.get_figheight()
    fig.text(0.5, 1.0, title, ha='center', va='top', fontsize=11, fontweight='bold')
    used = 0.36
    if warning:
        text = textwrap.fill(warning, max(40, int(fig.get_figwidth()
                                                  * _NOTICE_CHARS_PER_INCH)))
        fig.text(0.5, 1.0 - 0.24 / height, text, ha='center', va='top',
                 color=WARN_COLOR, fontsize=9, fontweight='bold')
        used = 0.36 + 0.17 * (text.count('\n') + 1)
    return 1.0 - used / height
