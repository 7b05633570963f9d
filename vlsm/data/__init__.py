"""Data layer: readers for CAMUS (2019 and 2023 releases), SDM CAMUS and the Synthetic
Boost authors' layout, prompts P0-P7, the phantom generator, the preprocessing cache
and dataset validation. Every reader returns `vlsm.data.records.EchoImage` records."""
