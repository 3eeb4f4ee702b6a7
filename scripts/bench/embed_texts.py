"""Writes the texts `../shared/peers/embed_peer.py` encodes, in its order, so trident's HTTP
benchmark sends the same inputs (same tokens) as the peer measures:
  embed_texts.py OUT_DIR [--words 100] [--n 512]   ->  OUT_DIR/queries.txt, OUT_DIR/texts.txt
The peer draws from random.Random(42): one 10-word warm-up sentence, 300 12-word queries,
then N sentences of WORDS words."""
import argparse, os, random

WORDS = ("the of and to in is that for it as was with be by on not this are or from at which but have an they "
         "you were her she there been one all we their has would when if so no out what up into can more said time "
         "about other than them some could these two may first then do any like now over such our even most made "
         "after also did many before must through back years where much your way down should because each just "
         "those people how too little state good very make world still own see men work long get here between").split()

ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("--words", type=int, default=100); ap.add_argument("--n", type=int, default=512)
a = ap.parse_args()
rng = random.Random(42)
def sent(n): return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."
sent(10)
queries = [sent(12) for _ in range(300)]
texts = [sent(a.words) for _ in range(a.n)]
os.makedirs(a.out, exist_ok=True)
for name, lines in (("queries.txt", queries), ("texts.txt", texts)):
    with open(os.path.join(a.out, name), "w") as f:
        f.write("\n".join(lines) + "\n")
