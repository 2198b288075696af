"""Build data/bert_student3.safetensors: a 3-layer MiniLM student distilled from the 6-layer model.

DistilBERT recipe, small: the student is the teacher with one layer out of two (layers 0, 2, 4), its
embeddings frozen (so they are the teacher's and need not ship); its three layers learn to match the
teacher's sentence embedding (cosine), its hidden states (cosine, student state i <-> teacher state 2i)
and, through the teacher's linear probe, its soft logits (Hinton KD, T = 2), on the training split of the
WordNet glosses only. Only the three layers' tensors are saved, in fp16 (5.3 M parameters, ~10.6 MB);
notebook 08 loads them into a fresh copy of the teacher and re-evaluates the student live.

    python scripts/train_bert_student3.py            # 4 epochs, ~20 min on 2 cores; prints the SHA-256 for lwkit/text.py
    python scripts/train_bert_student3.py --force    # overwrite the shipped file
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lwkit import text
from lwkit import transformer as tr
from lwkit.data import data_dir, sha256

MAX_LENGTH = 32
LAYERS = [0, 2, 4]  # tr.alternate_layers(6, 3)
LAYER_MAP = [(1, 2), (2, 4), (3, 6)]  # (student hidden state, teacher hidden state); 0 = embeddings
EPOCHS, BATCH, LR = 4, 32, 2e-4
SEED = 0


def student_state(student) -> dict[str, torch.Tensor]:
    """The tensors that differ from the teacher: the kept layers, renamed 0..2, in fp16."""
    return {k: v.detach().half().contiguous() for k, v in student.state_dict().items() if k.startswith("encoder.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(data_dir() / "bert_student3.safetensors"))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists; pass --force to overwrite it, or --out to write elsewhere")
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    splits = text.split_glosses(text.load_glosses())
    tokenizer, teacher = text.load_model()
    teacher.pooler = None
    teacher_enc = text.SentenceEncoder(teacher)
    x_train = text.embed(teacher_enc, tokenizer, splits.train.texts, max_length=MAX_LENGTH)
    head = text.train_probe(x_train, splits.train.labels, weight_decay=1e-2)

    student = tr.student_from_teacher(teacher, LAYERS)
    student.embeddings.requires_grad_(False)
    student_enc = text.SentenceEncoder(student)
    batches = []
    for start in range(0, len(splits.train), BATCH):
        idx = list(range(start, min(start + BATCH, len(splits.train))))
        enc = text.tokenize(tokenizer, [splits.train.texts[i] for i in idx], max_length=MAX_LENGTH)
        batches.append((enc, x_train[idx], splits.train.labels[idx]))

    def loss_fn(model, batch):
        enc, teacher_emb, labels = batch
        out = model(**enc, output_hidden_states=True)
        with torch.no_grad():
            t_out = teacher(**enc, output_hidden_states=True)
        emb = text.mean_pool(out.last_hidden_state, enc["attention_mask"])
        hidden = tr.hidden_state_loss(out.hidden_states, t_out.hidden_states, enc["attention_mask"], LAYER_MAP)
        return tr.embedding_distill_loss(emb, teacher_emb, head(emb), head(teacher_emb), labels) + hidden

    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(batches)).tolist()
        losses = tr.train_steps(student, [batches[i] for i in order], loss_fn, lr=LR, epochs=1)
        print(f"epoch {epoch + 1}: mean loss {sum(losses) / len(losses):.4f} ({time.perf_counter() - start:.0f} s)")
    state = student_state(student)
    save_file(state, str(out), metadata={"layers": ",".join(map(str, LAYERS)), "max_length": str(MAX_LENGTH),
                                         "epochs": str(args.epochs), "lr": str(LR)})
    x_test = text.embed(teacher_enc, tokenizer, splits.test.texts, max_length=MAX_LENGTH)
    s_test = text.embed(student_enc, tokenizer, splits.test.texts, max_length=MAX_LENGTH)
    print(f"teacher test accuracy {text.probe_accuracy(head, x_test, splits.test.labels):.4f}, student (teacher's "
          f"probe) {text.probe_accuracy(head, s_test, splits.test.labels):.4f}, "
          f"cosine {text.cosine_fidelity(x_test, s_test):.4f}")
    print(f"wrote {out}: {sum(v.numel() for v in state.values()):,} parameters, {out.stat().st_size:,} bytes, "
          f"sha256 {sha256(out)}")


if __name__ == "__main__":
    main()
