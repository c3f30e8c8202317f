"""Our runs beside the paper's numbers, for any table stored in ``results/paper/``.

Two kinds of table, recognised from the paper data (new tables need data, not code):

* checkpoint tables (``checkpoints_percent`` present, e.g. Tables 2 and 4): maximum test
  accuracy after each fraction of the epochs, per row;
* step tables (a ``bn_reference`` per dataset, e.g. Tables 3, 5, 6): gradient updates
  for each row to reach its BN reference's maximum test accuracy, the reduction in
  percent against the BN row, and each row's maximum accuracy.  Their runs come from
  the experiment named by ``settings_from`` (Table 3 <- table2 runs).

Runs of one row with several seeds are aggregated (mean, std, n; no std for one seed).
Every number is read off the runs' logs by :mod:`experiments.metrics`.  Whether runs are
comparable to the paper, and why not, is each run's one verdict
(:attr:`experiments.runs.Run.assessment`): comparable runs and the others are kept
apart, and the others are marked NOT COMPARABLE with the reasons.  A printed table fits
:data:`WIDTH` columns: what every row shares (the dataset, the verdict) is said once
above it, and a long verdict that differs between rows is a numbered note above the
table with its mark in the rows.

DenseNet (Sec. 4.4, :func:`compare_densenet`) and DCGAN (Sec. 4.5, :func:`compare_dcgan`)
are set beside the numbers the paper gives in its text.
"""
import csv
import io
import textwrap

from experiments import metrics, paper, rundir, verdict
from experiments.runs import Run, assess, find_runs

#: The test accuracy with each test batch's own statistics (``metrics.BATCH_ACC``).
BATCH_ACC = metrics.BATCH_ACC


def table_kind(doc):
    if 'checkpoints_percent' in doc:
        return 'checkpoints'
    if any('bn_reference' in d or any('bn_reference' in r for r in d['rows'].values())
           for d in doc['datasets'].values()):
        return 'steps'
    raise ValueError('%s: not a table of runs (no checkpoints_percent or bn_reference)'
                     % doc.get('source'))


def table_kind_or_none(table):
    """:func:`table_kind` of a stored paper table, None if it is not a table of runs
    (Table 7's timings are measured by bench/; ``sections`` holds quoted numbers)."""
    if not table.startswith('table') or table not in paper.available():
        return None
    try:
        return table_kind(paper.load(table))
    except ValueError:
        return None


def run_tables():
    """The paper's tables that our runs are compared with: table2 ... table6."""
    return [t for t in paper.available() if table_kind_or_none(t)]


def group_runs(runs, paper_dataset=None):
    """{(paper dataset, row, comparable): [Run]} of the runs that have a summary
    (their :attr:`~experiments.runs.Run.assessment`), only ``paper_dataset``'s if
    given."""
    groups = {}
    for r in runs:
        if r.summary is None:
            continue
        v = assess(r)
        if v.dataset is None or (paper_dataset and v.dataset != paper_dataset):
            continue
        if v.dataset in verdict.OWN_DATASETS:   # not the paper's: compare_pairs
            continue
        groups.setdefault((v.dataset, r.config['row'], v.comparable), []).append(r)
    return groups


def group_status(runs):
    """The status cell of a group of runs of one row: ``ok`` (comparable, all finished),
    ``partial`` (comparable, some unfinished) or ``NOT COMPARABLE (reasons)``, either of
    the last two followed by how many runs have not finished."""
    verdicts = [assess(r) for r in runs]
    if not verdicts:
        return 'no run'
    reasons = []
    for v in verdicts:
        reasons += [x for x in v.reasons if x not in reasons]
    unfinished = sum(v.status != verdict.FINISHED for v in verdicts)
    if not reasons and not unfinished:
        return 'ok'
    cell = 'NOT COMPARABLE (%s)' % '; '.join(reasons) if reasons else 'partial'
    if unfinished:
        cell += '; %d of %d runs not finished' % (unfinished, len(verdicts))
    return cell


def compare_checkpoints(table, runs, paper_dataset=None):
    """Rows of (dataset, row, checkpoint %, ours mean, std, n, paper, diff, status)."""
    doc = paper.load(table)
    out = []
    for (dataset, row, comparable), group in sorted(group_runs(runs, paper_dataset).items()):
        prow = doc['datasets'].get(dataset, {}).get('rows', {}).get(row)
        maxima = [metrics.max_accuracy_at(r.log, r.config['train']['checkpoints'],
                                          r.config['train']['epochs']) for r in group]
        for pct in map(str, doc['checkpoints_percent']):
            m, s, n = metrics.mean_std([at.get(pct) for at in maxima])
            ref = prow['max_test_accuracy'].get(pct) if prow else None
            out.append({'table': table, 'dataset': dataset, 'row': row,
                        'metric': 'max acc @%s%%' % pct, 'ours': m, 'std': s, 'n': n,
                        'paper': ref, 'diff': (m - ref) if m is not None and ref is not None
                        else None, 'status': group_status(group)})
    return out


def compare_steps(table, runs, paper_dataset=None):
    """Steps to the BN reference's maximum accuracy, the reduction against the BN row,
    and each row's maximum accuracy: ours vs the paper's.

    Each row's BN reference is the row's ``bn_reference`` (else the dataset's).  Our
    target is the mean (over seeds) best test accuracy of our own runs of that BN row,
    as the paper uses its own BN row's maximum.
    """
    doc = paper.load(table)
    groups = group_runs(runs, paper_dataset)
    out = []
    for dataset, ddoc in doc['datasets'].items():
        if paper_dataset and dataset != paper_dataset:
            continue
        prows = ddoc['rows']

        def ref_of(row):
            return prows[row].get('bn_reference', ddoc.get('bn_reference'))

        for comparable in (True, False):
            targets = {}
            for ref in {ref_of(r) for r in prows}:
                targets[ref], _, _ = metrics.mean_std(
                    [metrics.best_accuracy(r.log)
                     for r in groups.get((dataset, ref, comparable), [])])
            steps_recs, acc_recs = [], []
            for row, prow in prows.items():
                group = groups.get((dataset, row, comparable), [])
                if not group:
                    continue
                target = targets[ref_of(row)]
                steps = [metrics.steps_to_accuracy(r.log, target) for r in group] \
                    if target is not None else []
                reached = [st for st in steps if st is not None]
                m_steps, s_steps, _ = metrics.mean_std(reached)
                m_acc, s_acc, n = metrics.mean_std(
                    [metrics.best_accuracy(r.log) for r in group])
                base = {'table': table, 'dataset': dataset, 'row': row, 'n': n,
                        'status': group_status(group)}
                p_steps = prow.get('steps_to_target')
                p_ref = prows.get(ref_of(row), {}).get('steps_to_target')
                steps_recs.append(dict(
                    base, metric='steps to %s max (%s)' % (ref_of(row), (
                        'ours %.2f%%' % target if target is not None else 'no BN run')),
                    ours=m_steps, std=s_steps, paper=p_steps, ref=ref_of(row),
                    reached='%d/%d' % (len(reached), len(group)),
                    paper_reduction_pct=metrics.reduction_percent(p_steps, p_ref)))
                acc_recs.append(dict(
                    base, metric='max acc', ours=m_acc, std=s_acc,
                    paper=prow.get('max_accuracy'),
                    diff=(m_acc - prow['max_accuracy'])
                    if m_acc is not None and prow.get('max_accuracy') is not None else None))
            ours_steps = {r['row']: r['ours'] for r in steps_recs}
            for r in steps_recs:
                bn_steps = ours_steps.get(r.pop('ref'))
                r['our_reduction_pct'] = metrics.reduction_percent(r['ours'], bn_steps)
            out += steps_recs + acc_recs
    return out


def compare(table, runs=None, paper_dataset=None):
    """Comparison records for ``table`` ('table2', 'table3', ...).

    ``paper_dataset``: only runs whose rows stand for that dataset of the paper.  Runs
    are matched to the paper's rows by their config folder's dataset, so smoke runs on
    synthetic data line up with their rows; they are marked not comparable.
    """
    doc = paper.load(table)
    experiment = doc.get('settings_from', table)
    if runs is None:
        runs = find_runs(experiment=experiment)
    runs = [r for r in runs if r.config.get('experiment') == experiment]
    kind = table_kind(doc)
    return compare_checkpoints(table, runs, paper_dataset) if kind == 'checkpoints' \
        else compare_steps(table, runs, paper_dataset)


def compare_densenet(runs, depth, paper_dataset='cifar100'):
    """Best test error (%) of our BN-L<depth> / MN-L<depth> DenseNet runs beside the
    paper's (Sec. 4.4; ``results/paper/sections.json``)."""
    prow = paper.value('sections', paper_dataset, 'densenet_L%d' % depth)
    runs = [r for r in runs if r.config.get('experiment') == 'densenet']
    groups = group_runs(runs, paper_dataset)
    out = []
    for model, key in (('BN', 'bn_best_test_error'), ('MN', 'mn_best_test_error')):
        row = '%s-L%d' % (model, depth)
        found = [k for k in groups if k[1] == row] or [(paper_dataset, row, None)]
        for k in sorted(found, key=lambda k: (k[2] is not True, str(k))):
            group = groups.get(k, [])
            bests = [metrics.best_accuracy(r.log) for r in group]
            m, s, n = metrics.mean_std([100.0 - b for b in bests if b is not None])
            out.append({'table': 'densenet', 'dataset': paper_dataset, 'row': row,
                        'metric': 'best test error (%)', 'ours': m, 'std': s, 'n': n,
                        'paper': prow[key], 'diff': m - prow[key] if m is not None else None,
                        'status': group_status(group)})
    return out


def _read_gan_run(path):
    run = Run(path)
    if run.config.get('experiment') != 'dcgan' and not run.config.get('gan'):
        raise rundir.RunError('%s is not a GAN run (its experiment is %r)'
                               % (path, run.config.get('experiment')))
    return run


def compare_dcgan(bn_run_dir, mn_run_dir, show=True):
    """Our DCGAN-BN / DCGAN-MN numbers beside the paper's (Sec. 4.5): lowest FID, the
    step it was reached, and the step at which MN first reaches BN's lowest FID (at an
    evaluation, and linearly interpolated) with the reduction in percent.  Returns a dict
    (``rows``, ``status``, ``text``); prints the text when ``show``."""
    bn, mn = _read_gan_run(bn_run_dir), _read_gan_run(mn_run_dir)
    ref = paper.rows('sections', 'cifar10')['dcgan']
    cb, cm = metrics.fid_curve(bn.log), metrics.fid_curve(mn.log)
    bn_low, mn_low = metrics.lowest_fid(cb), metrics.lowest_fid(cm)
    reach = metrics.steps_to_fid(cm, bn_low[1]) if cb else None
    reach_interp = metrics.interpolated_steps_to_fid(cm, bn_low[1]) if cb else None
    reduction = metrics.reduction_percent(reach, bn_low[0])
    reduction_interp = metrics.reduction_percent(reach_interp, bn_low[0])
    rows = [
        ('DCGAN-BN lowest FID', bn_low[1], ref['bn_lowest_fid']),
        ('DCGAN-BN step of lowest FID', bn_low[0], ref['bn_steps_to_lowest_fid']),
        ('DCGAN-MN lowest FID', mn_low[1], ref['mn_lowest_fid']),
        ('DCGAN-MN step of lowest FID', mn_low[0], None),
        ('DCGAN-MN first evaluation with FID <= BN lowest', reach,
         ref['mn_steps_to_reach_bn_lowest_fid']),
        ('  same, linearly interpolated between evaluations', reach_interp,
         ref['mn_steps_to_reach_bn_lowest_fid']),
        ('step reduction (%) (evaluations)', reduction, ref['steps_reduction_percent']),
        ('step reduction (%) (interpolated)', reduction_interp,
         ref['steps_reduction_percent']),
    ]
    verdicts = [assess(r) for r in (bn, mn)]
    notes = sorted({reason for v in verdicts for reason in v.reasons})
    unfinished = [r.config['row'] for r, v in zip((bn, mn), verdicts)
                  if v.status != verdict.FINISHED]
    status = 'NOT COMPARABLE (%s)' % '; '.join(notes) if notes else 'comparable'
    if unfinished:
        status += '; not finished: %s' % ', '.join(unfinished)
    labels = {(r.summary or {}).get('fid_label') for r in (bn, mn)} - {None}
    lines = ['DCGAN on CIFAR-10 (paper Sec. 4.5): ours vs the paper']
    lines += _said_once([('vs the paper', status)] + [('BN run', bn.path), ('MN run', mn.path)]
                        + [('FID network', lbl) for lbl in sorted(labels)])
    width = max(len(r[0]) for r in rows)
    lines.append('%-*s  %12s  %12s' % (width, 'metric', 'ours', 'paper'))
    for name, ours, theirs in rows:
        lines.append('%-*s  %12s  %12s' % (width, name, _fmt_dcgan(ours), _fmt_dcgan(theirs)))
    lines += _said_once([('paper', '"%s"' % ref['quote'])])
    text = '\n'.join(lines)
    if show:
        print(text)
    return {'rows': [{'metric': n, 'ours': o, 'paper': p} for n, o, p in rows],
            'status': status, 'text': text, 'bn_run': bn.path, 'mn_run': mn.path,
            'fid_labels': sorted(labels)}


def _fmt_dcgan(v):
    if v is None:
        return '-'
    if isinstance(v, float) and not v.is_integer():
        return '%.2f' % v
    return '%d' % v


# --------------------------------------------------------------------------- output

#: The width, in characters, that every printed table fits.
WIDTH = 120
#: Columns said once above a text table when every row holds the same value.
SAID_ONCE = ('dataset', 'n', 'status', 'accuracy')
#: Cells of these columns longer than :data:`NOTE_AT` characters are said once above a
#: text table, as a numbered note, and the rows hold its mark (``[1]``).
NOTED = ('status',)
NOTE_AT = 12

COLUMNS = [('dataset', 'dataset'), ('row', 'row'), ('metric', 'metric'), ('ours', 'ours'),
           ('std', '±'), ('n', 'seeds'), ('reached', 'reached'), ('paper', 'paper'),
           ('diff', 'ours−paper'),
           ('our_reduction_pct', 'our red. %'),
           ('paper_reduction_pct', 'paper red. %'), ('status', 'status')]


def _fmt(v):
    if v is None:
        return '—'
    if isinstance(v, float):
        return '%.0f' % v if abs(v) >= 1000 else '%.2f' % v
    return str(v)


def _columns(recs, columns=None):
    return [(k, h) for k, h in columns or COLUMNS if any(k in r for r in recs)]


def _wrap(text, width=WIDTH, indent='    '):
    """``text`` in lines of at most ``width`` characters, the later ones indented,
    broken after a ``;`` (between two reasons) where it can be, else between words."""
    parts = text.split('; ')
    lines = []
    for part in [p + ';' for p in parts[:-1]] + parts[-1:]:
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += ' ' + part
        else:
            lines.append(indent + part if lines else part)
    return [short for line in lines for short in (
        [line] if len(line) <= width else textwrap.wrap(
            line, width, subsequent_indent=indent, break_long_words=False,
            break_on_hyphens=False))]


def _said_once(pairs, width=WIDTH):
    """``header: value`` lines for what every row of a table shares, wrapped."""
    return [line for h, v in pairs for line in _wrap('%s: %s' % (h, v), width)]


def _shared(recs, cols):
    """(the columns of :data:`SAID_ONCE` holding one value in every record, as
    ``[(header, text)]``; the other columns)."""
    said, kept = [], []
    for k, h in cols:
        values = {_fmt(r.get(k)) for r in recs}
        if k in SAID_ONCE and len(values) == 1:
            said.append((h, values.pop()))
        else:
            kept.append((k, h))
    return said, kept


def _grid(recs, cols, notes, noted=NOTED):
    """The lines of a text table of ``recs`` in ``cols``: a header, a rule, one line per
    record; a long cell of a ``noted`` column is replaced by its mark in ``notes``
    ({text: mark}, filled here)."""
    cells = [[h for _, h in cols]] + [[_cell(k, r.get(k), notes, noted) for k, _ in cols]
                                      for r in recs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return lines


def _cell(key, value, notes, noted=NOTED):
    """The text of a cell: a long one of a ``noted`` column is its note's mark."""
    text = _fmt(value)
    if key in noted and len(text) > NOTE_AT:
        return notes.setdefault(text, '[%d]' % (len(notes) + 1))
    return text


def _noted(notes, width=WIDTH):
    return [line for text, mark in notes.items() for line in _wrap('%s %s' % (mark, text),
                                                                   width)]


def to_text(recs, columns=None, width=WIDTH):
    """``recs`` as a text table: what every row shares (:data:`SAID_ONCE`) is said once
    above it, a long status once above it as a numbered note with its mark in the rows."""
    said, cols = _shared(recs, _columns(recs, columns))
    notes = {}
    body = _grid(recs, cols, notes)
    return '\n'.join(_said_once(said, width) + _noted(notes, width) + body)


def to_markdown(recs, columns=None):
    cols = _columns(recs, columns)
    lines = ['| ' + ' | '.join(h for _, h in cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(_fmt(r.get(k)) for k, _ in cols) + ' |' for r in recs]
    return '\n'.join(lines)


def to_csv(recs, columns=None):
    cols = _columns(recs, columns)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([k for k, _ in cols])
    for r in recs:
        w.writerow(['' if r.get(k) is None else r.get(k) for k, _ in cols])
    return buf.getvalue()


def checkpoint_layout(recs, width=WIDTH):
    """Checkpoint-table records in the paper's layout: one line per (dataset, row,
    status), each checkpoint as ``ours (paper)``, the maximum test accuracy (%) after
    that fraction of the epochs."""
    lines = {}
    for r in recs:
        key = (r['dataset'], r['row'], r['status'])
        line = lines.setdefault(key, {'dataset': key[0], 'row': key[1], 'status': key[2]})
        line[r['metric'].split('@')[1]] = '%s (%s)%s' % (
            _fmt(r['ours']), _fmt(r['paper']), '' if r['n'] <= 1 else ' n=%d' % r['n'])
    pcts = list(dict.fromkeys(r['metric'].split('@')[1] for r in recs))
    cols = [('dataset', 'dataset'), ('row', 'row')] + [('@' + p, '@' + p) for p in pcts] \
        + [('status', 'status')]
    rows = [dict(v, **{'@' + p: v.get(p, '—') for p in pcts}) for v in lines.values()]
    said, cols = _shared(rows, cols)
    notes = {}
    body = _grid(rows, cols, notes)
    head = ['max test accuracy (%) after each fraction of the epochs: ours (paper)']
    return '\n'.join(head + _said_once(said, width) + _noted(notes, width) + body)


# ------------------------------------------------------------------- BN vs MN pairs

def bn_row_of(row):
    """The BN row an MN row is measured against: ``'MN-2'`` -> ``'BN-2'``,
    ``'MN-L40'`` -> ``'BN-L40'``, a variant ``'MN-2-running'`` -> ``'BN-2'``; None for
    a row that is not an MN row.  (Where a cohort holds one BN row only, as Table 4's
    BN-1, :func:`compare_pairs` uses it.)"""
    return 'BN-' + row[3:].split('-')[0] if row.startswith('MN-') else None


def cohorts(runs, dataset=None):
    """{cohort: {row: [Run]}} of the runs that have a summary, grouped by their
    assessment's cohort (:func:`experiments.verdict.cohort`: runs comparable with each
    other), only those standing for ``dataset`` if given."""
    out = {}
    for r in runs:
        if r.summary is None:
            continue
        v = assess(r)
        if dataset and v.dataset != dataset:
            continue
        out.setdefault(v.cohort, {}).setdefault(r.config['row'], []).append(r)
    return out


def _pair_metrics(bn, mn, key):
    """Best and final accuracy (``key``: the inference or the batch-statistics one) of
    each row, and the acceleration metric: updates each row needs to reach the BN row's
    best accuracy (mean over its seeds), and MN's reduction of them against BN."""
    target, _, _ = metrics.mean_std([metrics.best_accuracy(r.log, key) for r in bn])
    recs = {}
    for name, group in (('bn', bn), ('mn', mn)):
        steps = [metrics.steps_to_accuracy(r.log, target, key) for r in group] \
            if target is not None else []
        reached = [s for s in steps if s is not None]
        recs[name] = {
            'best': metrics.mean_std([metrics.best_accuracy(r.log, key) for r in group]),
            'final': metrics.mean_std([metrics.final_accuracy(r.log, key) for r in group]),
            'steps': metrics.mean_std(reached)[:2],
            'reached': '%d/%d' % (len(reached), len(group)),
        }
    reduction = metrics.reduction_percent(recs['mn']['steps'][0], recs['bn']['steps'][0])
    return target, recs, reduction
def compare_pairs(runs, dataset=None, experiment=None):
    """Each MN row beside its BN row (:func:`bn_row_of`) among runs comparable with each
    other (one cohort: trained the same way on the same data), with the paper's
    acceleration metric, the updates to reach the BN row's best test accuracy, measured
    on both test accuracies: with inference statistics (the paper's metric) and with
    each test batch's own statistics (which tells a lag of the inference statistics
    from a difference in training speed).

    Returns records (one per row and accuracy) with ``status``: the verdict against the
    paper (NOT COMPARABLE, with reasons, for Fashion-MNIST runs).  An MN row without a
    BN row in its cohort gets a record saying so and how the closest BN runs differ.
    """
    if experiment:
        runs = [r for r in runs if r.config.get('experiment') == experiment]
    groups = cohorts(runs, dataset)
    out = []
    for cohort_key, rows in groups.items():
        for row in sorted(rows):
            bn_row = bn_row_of(row)
            if bn_row is None:
                continue
            lone_bn = [r for r in rows if r.startswith('BN-')]
            if bn_row not in rows and len(lone_bn) == 1:    # Table 4: BN-1 for every MN
                bn_row = lone_bn[0]
            mn = rows[row]
            first = mn[0]
            base = {'dataset': assess(first).dataset, 'pair': '%s/%s' % (bn_row, row),
                    'n': '%d/%d' % (len(rows.get(bn_row, [])), len(mn)),
                    'status': group_status(rows.get(bn_row, []) + mn)}
            if bn_row not in rows:
                others = [(assess(rs[0]).cohort_differences(assess(first)),
                           rs) for c, rr in groups.items() for r2, rs in rr.items()
                          if r2 == bn_row]
                why = ('no %s run trained the same way' % bn_row) + (
                    ' (closest differs in %s)' % ', '.join(
                        k for k, _, _ in min(others, key=lambda o: len(o[0]))[0])
                    if others else '')
                out.append(dict(base, accuracy='—', metric=why))
                continue
            for label, key in (('inference statistics', metrics.TEST_ACC),
                               ('batch statistics', BATCH_ACC)):
                target, m, reduction = _pair_metrics(rows[bn_row], mn, key)
                if target is None:
                    continue
                for name, r in (('BN', m['bn']), ('MN', m['mn'])):
                    out.append(dict(
                        base, row=bn_row if name == 'BN' else row, accuracy=label,
                        best=r['best'][0], best_std=r['best'][1],
                        final=r['final'][0], final_std=r['final'][1],
                        target=target, steps=r['steps'][0], steps_std=r['steps'][1],
                        reached=r['reached'],
                        reduction=reduction if name == 'MN' else None))
    return out


PAIR_COLUMNS = [('dataset', 'dataset'), ('pair', 'pair'), ('row', 'row'),
                ('accuracy', 'test accuracy with'), ('best', 'best %'), ('best_std', '±'),
                ('final', 'final %'), ('final_std', '±'), ('target', 'BN best %'),
                ('steps', 'updates'), ('steps_std', '±'), ('reached', 'reached'),
                ('reduction', 'MN red. %'), ('n', 'seeds BN/MN'),
                ('metric', 'note'), ('status', 'vs the paper')]
#: What :func:`pairs_to_text` calls the records of an MN row without its BN row.
UNPAIRED = 'MN rows without a BN row trained the same way'


def pairs_to_text(recs, width=WIDTH):
    """The BN-vs-MN records as text: what every record shares (the dataset, the seeds,
    the verdict against the paper, NOT COMPARABLE where it is not) said once above, then
    one table for each test accuracy (with inference statistics, the paper's, and with
    batch statistics), then the MN rows without a BN row to pair with."""
    # a pair's MN row is its 'row' on the MN line, so the table names only its BN row
    paired = [dict(r, pair=r['pair'].split('/')[0]) for r in recs if 'best' in r]
    unpaired = [r for r in recs if 'best' not in r]
    said, cols = _shared(paired + unpaired, [
        (k, 'BN row' if k == 'pair' else h) for k, h in _columns(recs, PAIR_COLUMNS)
        if k not in ('accuracy', 'metric')])
    notes = {}
    parts = []
    for label in dict.fromkeys(r['accuracy'] for r in paired):
        group = [r for r in paired if r['accuracy'] == label]
        parts.append(['test accuracy with %s:' % label] + _grid(group, cols, notes))
    if unpaired:
        status = any(k == 'status' for k, _ in cols)
        parts.append(['%s:' % UNPAIRED] + [
            line for r in unpaired for line in _wrap('  %s: %s%s' % (
                r['pair'], r['metric'],
                ' (%s)' % _cell('status', r.get('status'), notes) if status else ''),
                width)])
    lines = _said_once(said, width) + _noted(notes, width)
    for part in parts:
        lines += [''] + part
    return '\n'.join(lines)


def pairs_heading(dataset, width=WIDTH - 12):
    """What the BN-vs-MN table is, and is not, said above it (in lines of ``width``
    characters, room left for the experiment's name before it; one line if None)."""
    name = verdict.OWN_DATASET_NAMES.get(dataset, dataset)
    text = ('BN vs MN on %s: each pair was trained the same way on the same data and is '
            'comparable with itself; NOT COMPARABLE to the paper\'s numbers (not its data). '
            'Acceleration: updates to reach the BN row\'s best test accuracy (mean over '
            'seeds); the paper\'s metric is the one with inference statistics.' % name)
    if width is None:
        return text
    keep = ('BN vs MN on %s' % name, 'NOT COMPARABLE to the paper')
    for phrase in keep:                 # never broken between lines
        text = text.replace(phrase, phrase.replace(' ', '\xa0'))
    return '\n'.join(textwrap.wrap(text, width, break_on_hyphens=False)).replace('\xa0', ' ')
