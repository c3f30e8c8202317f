"""scripts/gpu_check.py, the one-call GPU session: its steps parse and run on the CPU."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'gpu_check.py')
sys.path.insert(0, os.path.join(REPO, 'scripts'))

import gpu_check  # noqa: E402
import reproduce  # noqa: E402
from experiments import environment  # noqa: E402
from experiments import reproduce as flow  # noqa: E402

# on a GPU machine gpu_check itself is the check; these cover its CPU behaviour
cpu_only = pytest.mark.skipif(environment.gpu_description() is not None,
                              reason='a GPU is present: run scripts/gpu_check.py itself')


def test_lists_every_step():
    out = subprocess.run([sys.executable, SCRIPT, '--list'], capture_output=True, text=True,
                         check=True).stdout
    assert [line.split()[0] for line in out.splitlines()] == [s[0] for s in gpu_check.STEPS]


def test_smoke_commands_are_valid_reproduce_command_lines(monkeypatch):
    """Each smoke step's arguments parse and reach the training entry point with
    device 0 and generated data (training itself is stubbed here)."""
    seen = []
    monkeypatch.setattr(flow, 'dcgan', lambda args: seen.append(args) or 0)
    monkeypatch.setattr(flow, 'run_rows', lambda args, experiment: seen.append(args))
    monkeypatch.setattr(flow, 'densenet_report', lambda args: 0)
    monkeypatch.setattr(flow.records, 'find_runs', lambda *a, **k: [])
    for name, action, _ in gpu_check.STEPS:
        if not name.startswith('smoke_'):
            continue
        argv = [a.format(out='/tmp/x', device='0') for a in action[2:]]
        try:
            reproduce.main(argv)
        except SystemExit as e:                 # table2/4: "no runs" after the stub
            assert e.code != 2 and 'no runs' in str(e.code), (name, e.code)
    assert len(seen) == 4
    assert all(a.device == '0' and a.synthetic and a.preset == ['smoke'] for a in seen)


@cpu_only
def test_refuses_without_a_gpu_unless_allowed(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, '--steps', 'environment', '--out',
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and 'no CUDA device' in r.stderr + r.stdout


@cpu_only
def test_records_each_step_and_keeps_going(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, '--allow-cpu', '--device', 'cpu', '--steps',
                        'environment,chainer_on_cupy', '--out', str(tmp_path)],
                       capture_output=True, text=True)
    record = json.load(open(tmp_path / 'gpu_check.json'))
    steps = {s['step']: s for s in record['steps']}
    assert set(steps) == {'environment', 'chainer_on_cupy'}
    assert steps['environment']['rc'] == 1           # no GPU here
    assert steps['chainer_on_cupy']['rc'] == 1       # no CuPy here: recorded, not fatal
    assert 'FAILED' in open(tmp_path / 'chainer_on_cupy.log').read()
    assert r.returncode == 1 and 'failed: environment, chainer_on_cupy' in r.stdout


def test_the_nccl_step_is_a_valid_data_parallel_command_line(monkeypatch):
    """The pure_nccl step runs reproduce.py under mpiexec with --communicator."""
    name, action, _ = next(s for s in gpu_check.STEPS if s[0] == 'nccl_table2')
    assert os.path.basename(action[0]).startswith('mpiexec') and action[1:3] == ['-n', '1']
    argv = [a.format(out='/tmp/x', device='0') for a in action[5:]]
    args = reproduce.parser().parse_args(argv)
    assert args.communicator == 'pure_nccl' and args.device == '0' and args.synthetic
