"""Run records name the code that ran: git commit, dirtiness, declared commits."""
import subprocess

from experiments import environment


def _git(repo, *args):
    subprocess.run(['git', '-c', 'user.email=t@t', '-c', 'user.name=t'] + list(args),
                   cwd=repo, check=True, capture_output=True)


def test_dirty_means_code_changed_not_records(tmp_path, monkeypatch):
    (tmp_path / 'results').mkdir()
    (tmp_path / 'code.py').write_text('a = 1\n')
    (tmp_path / 'results' / 'bench.md').write_text('old\n')
    _git(tmp_path, 'init', '-q')
    _git(tmp_path, 'add', '.')
    _git(tmp_path, 'commit', '-qm', 'x')
    monkeypatch.setattr(environment, 'REPO_ROOT', str(tmp_path))
    sha = environment.git_commit()
    assert len(sha) == 40
    (tmp_path / 'results' / 'bench.md').write_text('new\n')     # a rewritten record
    assert environment.git_commit() == sha
    (tmp_path / 'code.py').write_text('a = 2\n')
    assert environment.git_commit() == sha + '+dirty'


def test_outside_git_the_declared_commit_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, 'REPO_ROOT', str(tmp_path))
    monkeypatch.delenv('MIXNORM_GIT_COMMIT', raising=False)
    assert environment.git_commit() is None
    monkeypatch.setenv('MIXNORM_GIT_COMMIT', 'abc123')
    assert environment.git_commit() == 'abc123 (declared)'
