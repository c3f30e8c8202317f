"""Our runs beside the paper's numbers, for any table stored in ``results/paper/``.

Two kinds of table, recognised from the paper data (new tables need data, not code):

* checkpoint tables (``checkpoints_percent`` present, e.g. Tables 2 and 4): maximum test
  accuracy after each fraction of the epochs, per row;
* step tables (a ``bn_reference`` per dataset, e.g. Tables 3, 5, 6): gradient updates
  for each row to reach its BN reference's maximum test accuracy, the reduction in
  percent against the BN row, and each row's maximum accuracy.  Their runs come from
  the experiment named by ``settings_from`` (Table 3 <- table2 runs).

Runs of one row with several seeds are aggregated (mean, std, n; no std for one seed).
Whether runs are comparable to the paper, and why not, is
:func:`experiments.records.assess`'s verdict: comparable runs and the others are kept
apart, and the others are marked NOT COMPARABLE with the reasons.

DenseNet (Sec. 4.4, :func:`compare_densenet`) and DCGAN (Sec. 4.5, :func:`compare_dcgan`)
are set beside the numbers the paper gives in its text.
"""
import csv
import io
import math

from experiments import paper, records


def _mean_std(values):
    """(mean, sample std or None for fewer than two values, n)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
        else None
    return m, s, len(values)


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
    (:func:`experiments.records.assess`), only ``paper_dataset``'s if given."""
    groups = {}
    for r in runs:
        if r.summary is None:
            continue
        verdict = records.assess(r)
        if verdict.dataset is None or (paper_dataset and verdict.dataset != paper_dataset):
            continue
        if verdict.dataset in records.OWN_DATASETS:   # not the paper's: compare_pairs
            continue
        groups.setdefault((verdict.dataset, r.config['row'], verdict.comparable),
                          []).append(r)
    return groups


def group_status(runs):
    """The status cell of a group of runs of one row: ``ok`` (comparable, all finished),
    ``partial`` (comparable, some unfinished) or ``NOT COMPARABLE (reasons)``, either of
    the last two followed by how many runs have not finished."""
    verdicts = [records.assess(r) for r in runs]
    if not verdicts:
        return 'no run'
    reasons = []
    for v in verdicts:
        reasons += [x for x in v.reasons if x not in reasons]
    unfinished = sum(v.status != records.FINISHED for v in verdicts)
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
        for pct in map(str, doc['checkpoints_percent']):
            m, s, n = _mean_std([r.summary['max_test_accuracy'].get(pct) for r in group])
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
                targets[ref], _, _ = _mean_std(
                    [r.summary['best_test_accuracy']
                     for r in groups.get((dataset, ref, comparable), [])])
            steps_recs, acc_recs = [], []
            for row, prow in prows.items():
                group = groups.get((dataset, row, comparable), [])
                if not group:
                    continue
                target = targets[ref_of(row)]
                steps = [records.steps_to_accuracy(r.log, target) for r in group] \
                    if target is not None else []
                reached = [st for st in steps if st is not None]
                m_steps, s_steps, _ = _mean_std(reached)
                m_acc, s_acc, n = _mean_std([r.summary['best_test_accuracy'] for r in group])
                base = {'table': table, 'dataset': dataset, 'row': row, 'n': n,
                        'status': group_status(group)}
                p_steps = prow.get('steps_to_target')
                p_ref = prows.get(ref_of(row), {}).get('steps_to_target')
                steps_recs.append(dict(
                    base, metric='steps to %s max (%s)' % (ref_of(row), (
                        'ours %.2f%%' % target if target is not None else 'no BN run')),
                    ours=m_steps, std=s_steps, paper=p_steps, ref=ref_of(row),
                    reached='%d/%d' % (len(reached), len(group)),
                    paper_reduction_pct=100 * (1 - p_steps / p_ref)
                    if p_steps and p_ref else None))
                acc_recs.append(dict(
                    base, metric='max acc', ours=m_acc, std=s_acc,
                    paper=prow.get('max_accuracy'),
                    diff=(m_acc - prow['max_accuracy'])
                    if m_acc is not None and prow.get('max_accuracy') is not None else None))
            ours_steps = {r['row']: r['ours'] for r in steps_recs}
            for r in steps_recs:
                bn_steps = ours_steps.get(r.pop('ref'))
                r['our_reduction_pct'] = 100 * (1 - r['ours'] / bn_steps) \
                    if r['ours'] is not None and bn_steps else None
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
        runs = records.find_runs(experiment=experiment)
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
            m, s, n = _mean_std([100.0 - r.summary['best_test_accuracy'] for r in group
                                 if r.summary.get('best_test_accuracy') is not None])
            out.append({'table': 'densenet', 'dataset': paper_dataset, 'row': row,
                        'metric': 'best test error (%)', 'ours': m, 'std': s, 'n': n,
                        'paper': prow[key], 'diff': m - prow[key] if m is not None else None,
                        'status': group_status(group)})
    return out


def _read_gan_run(path):
    run = records.Run(path)
    if run.config.get('experiment') != 'dcgan' and not run.config.get('gan'):
        raise records.RunError('%s is not a GAN run (its experiment is %r)'
                               % (path, run.config.get('experiment')))
    return run


def compare_dcgan(bn_run_dir, mn_run_dir, show=True):
    """Our DCGAN-BN / DCGAN-MN numbers beside the paper's (Sec. 4.5): lowest FID, the
    step it was reached, and the step at which MN first reaches BN's lowest FID (at an
    evaluation, and linearly interpolated) with the reduction in percent.  Returns a dict
    (``rows``, ``status``, ``text``); prints the text when ``show``."""
    bn, mn = _read_gan_run(bn_run_dir), _read_gan_run(mn_run_dir)
    ref = paper.rows('sections', 'cifar10')['dcgan']
    cb, cm = records.fid_curve(bn.log), records.fid_curve(mn.log)
    bn_low = min(cb, key=lambda sv: sv[1]) if cb else (None, None)
    mn_low = min(cm, key=lambda sv: sv[1]) if cm else (None, None)
    reach = records.steps_to_fid(cm, bn_low[1]) if cb else None
    reach_interp = records.interpolated_steps_to_fid(cm, bn_low[1]) if cb else None
    reduction = (100.0 * (1 - reach / bn_low[0]) if reach is not None and bn_low[0]
                 else None)
    reduction_interp = (100.0 * (1 - reach_interp / bn_low[0])
                        if reach_interp is not None and bn_low[0] else None)
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
    verdicts = [records.assess(r) for r in (bn, mn)]
    notes = sorted({reason for v in verdicts for reason in v.reasons})
    unfinished = [r.config['row'] for r, v in zip((bn, mn), verdicts)
                  if v.status != records.FINISHED]
    status = 'NOT COMPARABLE (%s)' % '; '.join(notes) if notes else 'comparable'
    if unfinished:
        status += '; not finished: %s' % ', '.join(unfinished)
    labels = {(r.summary or {}).get('fid_label') for r in (bn, mn)} - {None}
    lines = ['DCGAN on CIFAR-10 (paper Sec. 4.5): ours vs the paper  [%s]' % status,
             'runs: BN %s | MN %s' % (bn.path, mn.path)]
    lines += ['FID network: %s' % lbl for lbl in sorted(labels)]
    width = max(len(r[0]) for r in rows)
    lines.append('%-*s  %12s  %12s' % (width, 'metric', 'ours', 'paper'))
    for name, ours, theirs in rows:
        lines.append('%-*s  %12s  %12s' % (width, name, _fmt_dcgan(ours), _fmt_dcgan(theirs)))
    lines.append('paper: "%s"' % ref['quote'])
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

COLUMNS = [('dataset', 'dataset'), ('row', 'row'), ('metric', 'metric'), ('ours', 'ours'),
           ('std', '±'), ('n', 'seeds'), ('reached', 'reached'), ('paper', 'paper'),
           ('diff', 'ours−paper'),
           ('our_reduction_pct', 'our reduction %'),
           ('paper_reduction_pct', 'paper reduction %'), ('status', 'status')]


def _fmt(v):
    if v is None:
        return '—'
    if isinstance(v, float):
        return '%.0f' % v if abs(v) >= 1000 else '%.2f' % v
    return str(v)


def _columns(recs, columns=None):
    return [(k, h) for k, h in columns or COLUMNS if any(k in r for r in recs)]


def to_text(recs, columns=None):
    cols = _columns(recs, columns)
    cells = [[h for _, h in cols]] + [[_fmt(r.get(k)) for k, _ in cols] for r in recs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


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


def checkpoint_layout(recs):
    """Checkpoint-table records in the paper's layout: one line per (dataset, row,
    status), each checkpoint as ``ours (paper)``."""
    lines = {}
    order = []
    for r in recs:
        key = (r['dataset'], r['row'], r['status'])
        if key not in lines:
            lines[key] = {}
            order.append(key)
        lines[key][r['metric'].split('@')[1]] = '%s (%s)%s' % (
            _fmt(r['ours']), _fmt(r['paper']), '' if r['n'] <= 1 else ' n=%d' % r['n'])
    pcts = []
    for v in lines.values():
        for p in v:
            if p not in pcts:
                pcts.append(p)
    header = ['dataset', 'row'] + ['max acc @%s: ours (paper)' % p for p in pcts] + ['status']
    cells = [header] + [[k[0], k[1]] + [lines[k].get(p, '—') for p in pcts] + [k[2]]
                        for k in order]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    out = ['  '.join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    out.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(out)


# ------------------------------------------------------------------- BN vs MN pairs

#: The test accuracy with each test batch's own statistics (train.BatchStatisticsEvaluator)
BATCH_ACC = 'validation_batchstats/main/accuracy'


def bn_row_of(row):
    """The BN row an MN row is measured against: ``'MN-2'`` -> ``'BN-2'``,
    ``'MN-L40'`` -> ``'BN-L40'``, a variant ``'MN-2-running'`` -> ``'BN-2'``; None for
    a row that is not an MN row.  (Where a cohort holds one BN row only, as Table 4's
    BN-1, :func:`compare_pairs` uses it.)"""
    return 'BN-' + row[3:].split('-')[0] if row.startswith('MN-') else None


def _best(log, key):
    accs = [e[key] for e in log if key in e]
    return 100.0 * max(accs) if accs else None


def _final(log, key):
    accs = [e[key] for e in log if key in e]
    return 100.0 * accs[-1] if accs else None


def _steps_to(log, key, target):
    for e in log:
        if key in e and 100.0 * e[key] >= target - 1e-9:
            return int(e['iteration'])
    return None


def cohorts(runs, dataset=None):
    """{cohort: {row: [Run]}} of the runs that have a summary, grouped by
    :func:`experiments.records.cohort` (runs comparable with each other), only those
    standing for ``dataset`` if given."""
    out = {}
    for r in runs:
        if r.summary is None:
            continue
        verdict = records.assess(r)
        if dataset and verdict.dataset != dataset:
            continue
        out.setdefault(verdict.cohort, {}).setdefault(r.config['row'], []).append(r)
    return out


def _pair_metrics(bn, mn, key):
    """Best and final accuracy (``key``: the inference or the batch-statistics one) of
    each row, and the acceleration metric: updates each row needs to reach the BN row's
    best accuracy (mean over its seeds), and MN's reduction of them against BN."""
    target, _, _ = _mean_std([_best(r.log, key) for r in bn])
    recs = {}
    for name, group in (('bn', bn), ('mn', mn)):
        steps = [_steps_to(r.log, key, target) for r in group] if target is not None else []
        reached = [s for s in steps if s is not None]
        recs[name] = {
            'best': _mean_std([_best(r.log, key) for r in group]),
            'final': _mean_std([_final(r.log, key) for r in group]),
            'steps': _mean_std(reached)[:2],
            'reached': '%d/%d' % (len(reached), len(group)),
        }
    b, m = recs['bn']['steps'][0], recs['mn']['steps'][0]
    reduction = 100 * (1 - m / b) if b and m is not None else None
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
            base = {'dataset': records.assess(first).dataset, 'pair': '%s/%s' % (bn_row, row),
                    'n': '%d/%d' % (len(rows.get(bn_row, [])), len(mn)),
                    'status': group_status(rows.get(bn_row, []) + mn)}
            if bn_row not in rows:
                others = [(records.assess(rs[0]).cohort_differences(records.assess(first)),
                           rs) for c, rr in groups.items() for r2, rs in rr.items()
                          if r2 == bn_row]
                why = ('no %s run trained the same way' % bn_row) + (
                    ' (closest differs in %s)' % ', '.join(
                        k for k, _, _ in min(others, key=lambda o: len(o[0]))[0])
                    if others else '')
                out.append(dict(base, accuracy='—', metric=why))
                continue
            for label, key in (('inference statistics', records.TEST_ACC),
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
                ('final', 'final %'), ('final_std', '±'), ('target', 'BN best % (target)'),
                ('steps', 'updates to target'), ('steps_std', '±'), ('reached', 'reached'),
                ('reduction', 'MN reduction %'), ('n', 'seeds BN/MN'),
                ('metric', 'note'), ('status', 'vs the paper')]


def pairs_to_text(recs):
    """The BN-vs-MN records as a text table (the paper's column, ``vs the paper``, says
    NOT COMPARABLE where it is not)."""
    return to_text(recs, PAIR_COLUMNS)


def pairs_heading(dataset):
    """What the BN-vs-MN table is, and is not, said above it."""
    name = records.OWN_DATASET_NAMES.get(dataset, dataset)
    return ('BN vs MN on %s: each pair was trained the same way on the same data and is '
            'comparable with itself; NOT COMPARABLE to the paper\'s numbers (not its data). '
            'Acceleration: updates to reach the BN row\'s best test accuracy (mean over '
            'seeds); the paper\'s metric is the one with inference statistics.' % name)
