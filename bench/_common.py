"""Shared by the benchmarks: timing, the environment, and writing records that name
the hardware (``results/bench/<name>_<cpu|gpu>.json`` and ``.md``)."""
import contextlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments import environment  # noqa: E402

OUT_DIR = os.path.join(REPO, 'results', 'bench')


def blas_limit(threads):
    """A context that limits BLAS to ``threads`` threads (``--blas-threads``; None or 0:
    as configured)."""
    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=threads, user_api='blas')


def median_time(fn, repeats, sync=None, warmup=1):
    """Median wall time of ``fn()`` in seconds (``sync()`` after each call on GPU)."""
    import numpy
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return float(numpy.median(ts))


def write_record(name, title, env, rows, columns, notes, out_dir=OUT_DIR, extra=None):
    """Write ``<name>.json`` (env + rows) and ``<name>.md`` (a table of ``columns``:
    (header, row key, format))."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    record = {'benchmark': name, 'environment': env, 'rows': rows}
    record.update(extra or {})
    with open(base + '.json', 'w') as f:
        json.dump(record, f, indent=2)
    gpu = env['gpu']['name'] if env.get('gpu') else 'none'
    with open(base + '.md', 'w') as f:
        f.write('# %s (measured %s)\n\n' % (title, env['date']))
        f.write('CPU: %s (%s cores); GPU: %s; commit `%s`; NumPy %s, Chainer %s.\n'
                'Command: `%s`. %s\n\n' % (env['cpu'], env['cpu_count'], gpu,
                                          env['git_commit'], env['numpy'], env['chainer'],
                                          env['command'], notes))
        f.write('| ' + ' | '.join(c[0] for c in columns) + ' |\n')
        f.write('|' + '---|' * len(columns) + '\n')
        for r in rows:
            f.write('| ' + ' | '.join((fmt % r[key]) if r.get(key) is not None else '—'
                                      for _, key, fmt in columns) + ' |\n')
    print('wrote %s.json and %s.md' % (base, base))
    return base
