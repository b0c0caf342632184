"""Reads Prometheus text exposition on stdin with the reference parser (prometheus_client)
and prints it as JSON: {"families": {name: type}, "samples": [[name, labels, value], ...]}.
A text the parser cannot read makes it exit non-zero."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"families": families, "samples": samples}, sys.stdout)
