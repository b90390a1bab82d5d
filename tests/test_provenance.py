"""Every result file says what made it: each JSON under benchmarks/results/
records the commit, the date, the machine and the command (provenance)."""

import glob
import json
import os

import pytest

from benchmarks import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = sorted(glob.glob(os.path.join(REPO, 'benchmarks', 'results', '**',
                                        '*.json'), recursive=True))
FIELDS = ('commit', 'date', 'machine', 'command')


def test_there_are_result_files():
  assert len(RESULTS) >= 5


@pytest.mark.parametrize('path', RESULTS,
                         ids=[os.path.relpath(p, REPO) for p in RESULTS])
def test_result_file_records_what_made_it(path):
  with open(path) as f:
    found = json.load(f)
  assert isinstance(found, dict) and isinstance(found.get('provenance'),
                                                dict), (
      f'{path}: no provenance record (benchmarks/provenance.py)')
  record = found['provenance']
  for field in FIELDS:
    value = record.get(field)
    assert isinstance(value, str) and value.strip(), (path, field)


def test_the_record_of_this_checkout():
  record = provenance.record('a test')
  assert set(FIELDS) <= set(record) and record['made_with'] == 'a test'
  commit = record['commit']
  assert commit == 'unknown' or len(commit.removesuffix('+changes')) == 40
