"""Learned reranking experiments for kNNBE (accuracy issue, item 3): measured, not adopted. See docs/accuracy.md.

    .venv/bin/python scripts/experiments/learned_rerank.py features STORE OUT.pkl
    .venv/bin/python scripts/experiments/learned_rerank.py combiner OUT.pkl [--train train|train_no_skillskape]
    .venv/bin/python scripts/experiments/learned_rerank.py cross-encoder-train OUT.pkl MODEL_DIR   (train extra)
    .venv/bin/python scripts/experiments/learned_rerank.py cross-encoder-eval OUT.pkl MODEL_DIR [--top 20]

`features` computes, for every candidate skill of a sentence (top 50 by the bi-encoder united with every skill a
neighbour votes for), what kNNBE already knows: b, the vote v, the share of the k neighbours that vote, the best
voter's similarity, a sharper vote (tau 0.02), 1/(1+rank by b), b minus the best b, the nearest neighbour's
similarity. Evaluation sentences: TECH and HOUSE validation, SkillSkape dev, as the product sees them. Training
sentences: 3,000 of SkillSkape *train*, which is in the memory, so each one's own text is removed from its
neighbours; `train_no_skillskape` also takes the votes from the ESCO sources only (queries from a distribution the
memory does not hold, as benchmark sentences are). Exact search, global layer, the store's scoring parameters.
Every comparison is against kNNBE with those parameters on the same candidates, with paired bootstrap intervals.
"""

from __future__ import annotations

import argparse
import pickle
import random
import time

import numpy as np

from knnbe_qdrant import EdgeStore, Encoder, SkillMapper
from knnbe_qdrant import _schema as S
from knnbe_qdrant._data import ESCO_ALT_LABELS, ESCO_DESCRIPTIONS, load_taxonomy, skillskape_sentences
from knnbe_qdrant.evaluation.benchmarks import SKILLSKAPE_DEV, read_benchmark, resolve_gold
from knnbe_qdrant.evaluation.metrics import bootstrap_ci, per_sentence

EVAL = {"tech": "tech-validation", "house": "house-validation", "dev": SKILLSKAPE_DEV}
FEATURES = ["b", "vote", "voter_share", "best_voter_sim", "vote_tau_0.02", "inv_rank_b", "b_gap", "top_sim"]
N_SKILLS = 50
N_TRAIN = 3000


def candidate_features(store, encoder, params, texts, golds, *, exclude_self, memory_where=None):
    k, tau = params.k, params.tau
    vectors = encoder.encode(list(texts))
    out = []
    for start in range(0, len(texts), 64):
        batch = vectors[start : start + 64]
        skill_hits = store.query_batch(S.SKILLS, batch, N_SKILLS, where={S.F_TENANT: S.GLOBAL_TENANT},
                                       payload=[S.F_SKILL_ID], exact=True)
        memory_hits = store.query_batch(S.MEMORY, batch, k + 8, where=memory_where or {S.F_TENANT: S.GLOBAL_TENANT},
                                        payload=[S.F_SKILL_ID, S.F_TEXT], exact=True)
        for row, text in enumerate(texts[start : start + 64]):
            neighbours = [h for h in memory_hits[row] if not (exclude_self and h.payload[S.F_TEXT] == text)][:k]
            b = {h.payload[S.F_SKILL_ID]: h.score for h in skill_hits[row]}
            extra = sorted({h.payload[S.F_SKILL_ID] for h in neighbours} - set(b))
            records = store.retrieve(S.SKILLS, [S.skill_point_id(S.GLOBAL_TENANT, s) for s in extra],
                                     with_vectors=True, payload=[S.F_SKILL_ID])
            for r in records:
                b[r.payload[S.F_SKILL_ID]] = float(batch[row] @ (r.vector / np.linalg.norm(r.vector)))
            sims = np.array([h.score for h in neighbours])
            sharp = {}
            votes, voters, best = {}, {}, {}
            for t, acc in ((tau, votes), (0.02, sharp)):
                w = np.exp((sims - sims.max()) / t)
                for h, wi in zip(neighbours, w / w.sum()):
                    acc[h.payload[S.F_SKILL_ID]] = acc.get(h.payload[S.F_SKILL_ID], 0.0) + wi
            for h, s in zip(neighbours, sims):
                sid = h.payload[S.F_SKILL_ID]
                voters[sid] = voters.get(sid, 0) + 1
                best[sid] = max(best.get(sid, -1.0), s)
            candidates = list(b)
            bs = np.array([b[c] for c in candidates])
            rank = np.empty(len(bs))
            rank[np.argsort(-bs)] = np.arange(len(bs))
            rows = [[b[c], votes.get(c, 0.0), voters.get(c, 0) / k, best.get(c, 0.0), sharp.get(c, 0.0),
                     1 / (1 + rank[i]), b[c] - bs.max(), sims[0] if sims.size else 0.0]
                    for i, c in enumerate(candidates)]
            out.append({"text": text, "candidates": candidates, "X": np.array(rows), "gold": golds[start + row]})
    return out


def features(args):
    store = EdgeStore(args.store)
    mapper = SkillMapper(store, Encoder(store.manifest.model), exact=True)
    data = {"params": mapper.params}
    for name, path in EVAL.items():
        items = read_benchmark(path)
        golds, _ = resolve_gold(items, store)
        data[name] = candidate_features(store, mapper.encoder, mapper.params, [i.sentence for i in items], golds,
                                        exclude_self=False)
    train = [(t, set(u)) for t, u in skillskape_sentences("train") if u and u != ["UNK"]]
    train = random.Random(0).sample(train, N_TRAIN)
    texts, golds = [t for t, _ in train], [g for _, g in train]
    data["train"] = candidate_features(store, mapper.encoder, mapper.params, texts, golds, exclude_self=True)
    esco_only = {S.F_TENANT: S.GLOBAL_TENANT, S.F_SOURCE: [ESCO_ALT_LABELS, ESCO_DESCRIPTIONS]}
    data["train_no_skillskape"] = candidate_features(store, mapper.encoder, mapper.params, texts, golds,
                                                     exclude_self=True, memory_where=esco_only)
    with open(args.out, "wb") as f:
        pickle.dump(data, f)


def knnbe(data, sentence):
    return data["params"].lam * sentence["X"][:, 0] + (1 - data["params"].lam) * sentence["X"][:, 1]


def metrics(data, split, score):
    rankings, golds = [], []
    for sentence in data[split]:
        s = score(sentence)
        order = np.lexsort((np.arange(len(s)), -sentence["X"][:, 0], -s))
        rankings.append([sentence["candidates"][i] for i in order[:100]])
        golds.append(sentence["gold"])
    return per_sentence(rankings, golds)


def report(label, data, score):
    parts = [label]
    for split in EVAL:
        new, old = metrics(data, split, score), metrics(data, split, lambda s: knnbe(data, s))
        cells = []
        for m in ("rp@5", "rp@10", "mrr"):
            lo, hi = bootstrap_ci(new[m] - old[m])
            cells.append(f"{100 * new[m].mean():.1f} ({100 * (new[m] - old[m]).mean():+.1f} [{100 * lo:+.1f}, "
                         f"{100 * hi:+.1f}])")
        parts.append(f"{split}: " + " / ".join(cells))
    print(" | ".join(parts), flush=True)


def combiner(args):
    from sklearn.linear_model import LogisticRegression

    data = pickle.load(open(args.features, "rb"))  # noqa: SIM115 (a file this script wrote)
    report("kNNBE", data, lambda s: knnbe(data, s))
    for columns in ([0, 1], [0, 1, 2, 3], list(range(len(FEATURES)))):
        for c in (0.1, 1.0):
            x, y = [], []
            for sentence in data[args.train]:
                top = np.argsort(-knnbe(data, sentence))[:30]  # the candidates that compete for the top ranks
                x.append(sentence["X"][top][:, columns])
                y.append([sentence["candidates"][i] in sentence["gold"] for i in top])
            model = LogisticRegression(C=c, max_iter=2000).fit(np.vstack(x), np.concatenate(y))
            w, name = model.coef_[0], "+".join(FEATURES[i] for i in columns)
            report(f"{name} C={c} w={np.round(w, 2).tolist()}", data, lambda s, w=w, cols=columns: s["X"][:, cols] @ w)


def cross_encoder_train(args):
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from knnbe_qdrant.encoding import local_model_dir

    data = pickle.load(open(args.features, "rb"))  # noqa: SIM115
    labels = {s.id: s.label for s in load_taxonomy()}
    pairs = []
    for sentence in data["train"]:
        order = np.argsort(-knnbe(data, sentence))[:30]
        negatives = [sentence["candidates"][i] for i in order if sentence["candidates"][i] not in sentence["gold"]]
        pairs += [(sentence["text"], labels[g], 1.0) for g in sentence["gold"] if g in labels]
        pairs += [(sentence["text"], labels[n], 0.0) for n in negatives[:6]]
    random.Random(0).shuffle(pairs)
    dataset = Dataset.from_dict({"sentence": [p[0] for p in pairs], "label_text": [p[1] for p in pairs],
                                 "label": [p[2] for p in pairs]})
    model = CrossEncoder(str(local_model_dir("knnbe-qdrant/all-MiniLM-L6-v2-esco")), num_labels=1, max_length=96)
    training = CrossEncoderTrainingArguments(output_dir=args.model + ".work", num_train_epochs=1,
                                             per_device_train_batch_size=32, learning_rate=3e-5, warmup_steps=0.1,
                                             save_strategy="no", logging_steps=50, seed=0, report_to="none")
    started = time.perf_counter()
    CrossEncoderTrainer(model=model, args=training, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model)).train()
    print(f"{len(pairs)} pairs, trained in {time.perf_counter() - started:.0f} s")
    model.save(args.model)


def cross_encoder_eval(args):
    from sentence_transformers.cross_encoder import CrossEncoder

    data = pickle.load(open(args.features, "rb"))  # noqa: SIM115
    labels = {s.id: s.label for s in load_taxonomy()}
    model = CrossEncoder(args.model, max_length=96)
    for split in EVAL:
        pairs = []
        for sentence in data[split]:
            sentence["top"] = np.argsort(-knnbe(data, sentence))[: args.top]
            pairs += [(sentence["text"], labels.get(sentence["candidates"][i], "")) for i in sentence["top"]]
        started = time.perf_counter()
        scores = model.predict(pairs, batch_size=128, show_progress_bar=False)
        seconds = time.perf_counter() - started
        print(f"{split}: {len(data[split]) / seconds:.1f} sentences/s ({len(pairs) / seconds:.0f} pairs/s)")
        for i, sentence in enumerate(data[split]):
            sentence["ce"] = np.asarray(scores[i * args.top : (i + 1) * args.top])

    def fused(alpha):
        def score(sentence):
            s = knnbe(data, sentence).copy()
            s[sentence["top"]] = 10 + sentence["ce"] if alpha is None else s[sentence["top"]] + alpha * sentence["ce"]
            return s
        return score

    for alpha in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, None):
        report(f"kNNBE + {alpha} x CE" if alpha is not None else "CE alone (top reranked)", data, fused(alpha))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("features")
    p.add_argument("store")
    p.add_argument("out")
    p.set_defaults(func=features)
    p = sub.add_parser("combiner")
    p.add_argument("features")
    p.add_argument("--train", default="train", choices=["train", "train_no_skillskape"])
    p.set_defaults(func=combiner)
    p = sub.add_parser("cross-encoder-train")
    p.add_argument("features")
    p.add_argument("model")
    p.set_defaults(func=cross_encoder_train)
    p = sub.add_parser("cross-encoder-eval")
    p.add_argument("features")
    p.add_argument("model")
    p.add_argument("--top", type=int, default=20)
    p.set_defaults(func=cross_encoder_eval)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
