"""Filtering a scored data set on Ray (jobs.filter): `filter_dataset` decides the kept rows in the
driver from the narrow columns (drray.curation.filtering), then streams every column once
through Ray Data (read_parquet -> keep_rows -> write_parquet) and writes summary.json last.
"""
from __future__ import annotations

import json
from typing import Optional

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.datasource import FilenameProvider

from actors.cluster import ray_session
from drray.curation.filtering import summarize
from drray.curation.scored_input import (check_settings, keep_mask, keep_rows, make_rule, open_scored, read_narrow,
                                         resolve_stratify)
from drray.storage import check_output, check_separate, replacing_output


def filter_dataset(input: str, output: str, discard: float, mode: str = "quantile", batch_size: int = 128,
                   cdf_sample: int = 100_000, seed: int = 0, overwrite: bool = False,
                   address: Optional[str] = None, stratify: Optional[str] = None) -> dict:
    """Keep the rows of `input` that the `mode` rule keeps at this discard fraction, into `output`
    (Parquet parts and summary.json); returns the summary. stratify `label` applies the rule within
    each class; None: `label` where the rows have labels of more than one class. Everything is
    checked before Ray starts; a local output is written beside its destination and renamed into
    place at the end."""
    check_settings(discard, batch_size, cdf_sample, stratify)
    fs, files, schema = open_scored(input, mode, stratify)
    check_separate(output, input)
    out_fs, out_path = check_output(output, overwrite)
    narrow = read_narrow(fs, files, schema, input, stratify)
    stratify = resolve_stratify(stratify, narrow)
    rule, info = make_rule(mode, discard, narrow, batch_size, cdf_sample, seed, stratify)
    kept = keep_mask(rule, narrow["score"], narrow.get("id"), narrow.get("label"))
    summary = {"mode": mode, "discard": discard, "stratify": stratify, "input": input, "output": output,
               **summarize(narrow["score"], kept, narrow.get("is_corrupted"), narrow.get("label")), **info}
    print(f"{input}: {summary['rows_in']} rows in {len(files)} file(s); {mode} (stratify {stratify}) keeps "
          f"{summary['rows_kept']}", flush=True)
    with ray_session(address), replacing_output(out_fs, out_path) as target:  # Ray Data creates it
        stream_filter(fs, files, rule, out_fs, target)
        written = count_rows(out_fs, target)
        if written != summary["rows_kept"]:  # the driver and the workers applied the same rule
            raise RuntimeError(f"wrote {written} rows but the rule keeps {summary['rows_kept']}")
        if written == 0:  # Ray Data writes no file for no rows; readers still want the schema
            out_fs.create_dir(target, recursive=True)
            with out_fs.open_output_stream(f"{target.rstrip('/')}/part-00000-0.parquet") as stream:
                pq.write_table(schema.empty_table(), stream)
        payload = json.dumps(summary, indent=2) + "\n"
        with out_fs.open_output_stream(f"{target.rstrip('/')}/summary.json") as stream:  # last: marks completion
            stream.write(payload.encode())
    return summary


class _PartNames(FilenameProvider):
    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:05d}.parquet"


def stream_filter(fs, files, rule, out_fs, out_path: str) -> None:
    """One streaming pass: read every column, keep the rule's rows, write Parquet."""
    context = ray.data.DataContext.get_current()
    preserve = context.execution_options.preserve_order
    # Rows in read order, which is input order on most runs; one test run under Ray 2.60's
    # ListFiles -> ReadFiles read still wrote them in another order, so the kept rows (not their
    # order) are what the job guarantees.
    context.execution_options.preserve_order = True
    try:
        dataset = ray.data.read_parquet(files, filesystem=fs)
        kept = dataset.map_batches(keep_rows, batch_format="pyarrow", fn_kwargs={"rule": rule})
        # OVERWRITE: the target is new and empty (a fresh staging directory, or a URI cleared just
        # before), and this mode lets the files have stable names (APPEND wants a random write id).
        kept.write_parquet(out_path, filesystem=out_fs, filename_provider=_PartNames(),
                           mode=ray.data.SaveMode.OVERWRITE)
    finally:
        context.execution_options.preserve_order = preserve


def count_rows(fs, path: str) -> int:
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    files = [e.path for e in fs.get_file_info(selector) if e.type == pafs.FileType.File and e.path.endswith(".parquet")]
    return pads.dataset(files, filesystem=fs, format="parquet").count_rows() if files else 0
