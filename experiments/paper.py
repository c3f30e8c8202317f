"""Loader for the PAPER'S reported numbers (Kalayeh & Shah), stored under results/paper/.

These are the numbers printed in the paper, transcribed by hand -- never our own results.

    >>> from experiments import paper
    >>> paper.value('table2', 'cifar10', 'BN-2', 'max_test_accuracy', 100)
    87.95
"""
import json
import os

PAPER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'results', 'paper')


def available():
    """Names of the stored tables (file names without .json), sorted."""
    if not os.path.isdir(PAPER_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(PAPER_DIR) if f.endswith('.json'))


def load(table):
    """The whole JSON document of `table` ('table2' ... 'table7', 'sections') as a dict."""
    name = table[:-5] if table.endswith('.json') else table
    path = os.path.join(PAPER_DIR, name + '.json')
    if not os.path.isfile(path):
        raise FileNotFoundError('no paper table {!r} in {}; available: {}'.format(
            table, PAPER_DIR, ', '.join(available()) or '(none)'))
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def rows(table, dataset):
    """Dict of rows (keyed by the paper's row name, e.g. 'MN-3') of `table` for `dataset` ('cifar10'/'cifar100')."""
    datasets = load(table)['datasets']
    if dataset not in datasets:
        raise KeyError('{} has no dataset {!r}; available: {}'.format(table, dataset, ', '.join(sorted(datasets))))
    return datasets[dataset]['rows']


def value(table, dataset, row, *keys):
    """rows(table, dataset)[row][k1][k2]...; integer keys also match their string form (e.g. 100 -> '100')."""
    r = rows(table, dataset)
    if row not in r:
        raise KeyError('{}/{} has no row {!r}; available: {}'.format(table, dataset, row, ', '.join(sorted(r))))
    node, path = r[row], [table, dataset, row]
    for k in keys:
        if isinstance(node, dict) and k not in node and str(k) in node:
            k = str(k)
        if not isinstance(node, dict) or k not in node:
            have = ', '.join(sorted(node)) if isinstance(node, dict) else type(node).__name__
            raise KeyError('{} has no key {!r}; available: {}'.format('/'.join(path), k, have))
        node = node[k]
        path.append(str(k))
    return node


#: The standard CIFAR split the paper uses for both datasets (Sec. 4.1: "50K images are
#: used for training and 10K for test").
DATA_SPLIT = {'train': 50000, 'test': 10000}
PAPER_DATASETS = ('cifar10', 'cifar100')


def training_length(experiment):
    """How long the paper trains ``experiment``: ``('epochs', n)`` for the classifier
    tables and DenseNet, ``('updates', n)`` for DCGAN (generator updates), from the
    stored settings (``training.epochs`` of the table, or of the table it takes its
    settings from; ``sections.json`` for DenseNet and DCGAN).  None if unknown."""
    if experiment == 'densenet':
        return 'epochs', load('sections')['densenet_setting']['epochs']
    if experiment == 'dcgan':
        setting = rows('sections', 'cifar10')['dcgan']['setting']
        return 'updates', setting['total_updates']
    if experiment not in available():
        return None
    doc = load(experiment)
    if 'settings_from' in doc:
        return training_length(doc['settings_from'])
    epochs = doc.get('training', {}).get('epochs')
    return ('epochs', epochs) if epochs else None
