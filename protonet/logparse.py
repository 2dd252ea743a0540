"""Read Caffe training logs (glog lines) into train and test tables.

The tables are the ones Caffe's `tools/extra/parse_log.py` builds, so its
CSV files (`<log>.train`, `<log>.test`) come out the same and scripts that
read them keep working:

- a train row per iteration that printed `Train net output #k: name = v`,
  a test row per iteration that printed `Test net output #k: name = v`;
- columns `NumIters`, `Seconds` (since the `Solving ...` line),
  `LearningRate` (the last `lr = x` seen, NaN before the first one, the
  first row's copied from the second), then one column per output name;
- a row is kept once it has as many columns as the first row of its table
  (parse_log.py's rule, which also drops a trailing incomplete row).

Beyond parse_log.py, `read_log` keeps what a plot wants and parse_log.py
throws away: the smoothed loss of every `Iteration N, loss = x` line
(whether or not the net has train outputs), and each learning-rate change.
Lines without a glog prefix (a progress bar, a traceback) are skipped
instead of crashing the parser.
"""

import csv
import datetime
import io as _stdio
import math
import os
import re
from dataclasses import dataclass, field

from . import io as _io
from .errors import ProtonetError

# The same patterns parse_log.py uses (number syntax included).
_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([-+\.\deEinfa]+)")
_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) ")


class LogError(ProtonetError):
    """A file given as a training log holds no Caffe training log."""


@dataclass
class TrainingLog:
    """One parsed log.

    Attributes:
        path: the file it came from.
        train, test: parse_log.py's rows (dicts, columns in order).
        loss: (iteration, seconds, smoothed loss) of every loss line.
        lr: (iteration, seconds, rate) of every `lr = x` line.
    """

    path: str
    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)

    def test_names(self):
        """The test outputs' column names, in order."""
        return _output_names(self.test)

    def train_names(self):
        return _output_names(self.train)


def _output_names(rows):
    names = []
    for row in rows:
        for k in list(row)[3:]:
            if k not in names:
                names.append(k)
    return names


def _timestamp(line, year):
    m = _GLOG.match(line)
    if m is None:
        return None
    month, day, hour, minute, second = (int(g) for g in m.groups()[:5])
    try:
        return datetime.datetime(year, month, day, hour, minute, second,
                                 int(m.group(6)))
    except ValueError:      # 0230 and the like: not a glog line after all
        return None


def _log_year(path):
    # NOTE(caffe): glog lines carry no year; parse_log.py takes the file's
    # creation year (its ctime), and so do we.
    return datetime.datetime.fromtimestamp(os.path.getctime(path)).year


def _add_output(rows, row, match, iteration, seconds, rate):
    """parse_log.py's parse_line_for_net_output: returns the open row."""
    if match:
        if row is None or row["NumIters"] != iteration:
            if row is not None:
                rows.append(row)
            row = {"NumIters": iteration, "Seconds": seconds,
                   "LearningRate": rate}
        row[match.group(2)] = float(match.group(3))
    if row is not None and rows and len(row) == len(rows[0]):
        rows.append(row)
        row = None
    return row


def _read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LogError(f"{path}: cannot read the log: {e.strerror}") from None
    return data.decode("utf-8", errors="replace").splitlines()


def read_log(path):
    """Parse the glog training log at `path` into a TrainingLog.

    Raises:
        LogError: the file cannot be read, or it has no `Solving` line and
            no iteration (it is not a Caffe/protonet training log).
    """
    path = os.fspath(path)
    lines = _read_lines(path)
    year = _log_year(path)
    log = TrainingLog(path)
    start = None
    rest = iter(lines)
    for line in rest:
        if "Solving" in line:
            start = _timestamp(line.strip(), year)
            break
    if start is None:
        raise LogError(f"{path}: not a Caffe training log (no glog "
                       f"'Solving <net>' line; is it the trainer's stderr?)")
    iteration, rate = -1.0, math.nan
    train_row = test_row = None
    for line in rest:
        m = _ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        when = _timestamp(line.strip(), year)
        if when is None:
            continue
        seconds = (when - start).total_seconds()
        m = _LEARNING_RATE.search(line)
        if m:
            rate = float(m.group(1))
            log.lr.append((iteration, seconds, rate))
        m = _LOSS.search(line)
        if m:
            log.loss.append((float(m.group(1)), seconds, float(m.group(2))))
        train_row = _add_output(log.train, train_row, _TRAIN_OUTPUT.search(line),
                                iteration, seconds, rate)
        test_row = _add_output(log.test, test_row, _TEST_OUTPUT.search(line),
                               iteration, seconds, rate)
    for rows in (log.train, log.test):
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return log


def parse_log(path):
    """parse_log.py's `parse_log`: (train rows, test rows)."""
    log = read_log(path)
    return log.train, log.test


def _write_csv(path, rows, delimiter):
    if not rows:
        return None
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter,
                            lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    _io.atomic_write(path, buf.getvalue().encode("utf-8"))
    return path


def save_csv_files(log_path, output_dir, train, test, delimiter=","):
    """Write `<log name>.train` and `<log name>.test` into `output_dir` as
    parse_log.py does (csv's excel dialect; a table with no rows is not
    written). Returns the paths written."""
    base = os.path.join(output_dir, os.path.basename(log_path))
    written = [_write_csv(base + ".train", train, delimiter),
               _write_csv(base + ".test", test, delimiter)]
    return [p for p in written if p]
