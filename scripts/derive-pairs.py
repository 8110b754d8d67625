#!/usr/bin/env python3
"""Derives preference pairs from data/unix_manual_qa.csv, inventing no text.

Rule: for each row, `chosen` is its own answer and `rejected` is the answer of the next row
of the same category in file order (the first row of the category for the last one): a
fluent answer about another manual page. The prompt and category are the row's own.

    python3 scripts/derive-pairs.py > examples/data/unix_manual_pairs.csv
"""
import csv
import sys
from collections import defaultdict


def main() -> None:
    with open("data/unix_manual_qa.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_category = defaultdict(list)
    for i, row in enumerate(rows):
        by_category[row["category"]].append(i)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["prompt", "chosen", "rejected", "category"])
    for indices in by_category.values():
        for k, i in enumerate(indices):
            other = rows[indices[(k + 1) % len(indices)]]
            row = rows[i]
            if other["answer"] != row["answer"]:
                out.writerow([row["question"], row["answer"], other["answer"], row["category"]])


if __name__ == "__main__":
    main()
