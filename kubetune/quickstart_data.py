"""The quickstart's task: turn a made-up catalogue entry into a fixed JSON record.

Each prompt carries one product description written in one of several phrasings; the answer
is always the same JSON shape with the facts of that description. Every value is in the prompt,
so the task is learnable from a few hundred examples, and a base model that has never seen the
shape fails it visibly. The shifted traffic is a different topic (customer-support questions),
for the drift monitor to notice. Pure and seeded: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

INSTRUCTION = "Return the catalogue record for this entry."
FIELDS = ("sku", "name", "category", "price", "currency", "stock", "in_stock")
"""The fixed answer shape, in order."""

_BRAND_HEADS = ("Vor", "Kel", "Zan", "Bri", "Tol", "Mur", "Quel", "Dax", "Sof", "Ny", "Pel", "Rho", "Ulm", "Wex")
_BRAND_TAILS = ("ta", "mi", "ora", "vex", "lin", "dor", "eta", "ix", "ano", "ud", "era", "osk")
_MODELS = ("X2", "Pro 7", "Mini", "S", "Air 3", "Max", "Neo", "Lite 2", "One", "Z9", "Duo", "Core 5")
_PRODUCTS = {
    "kitchen": ("kettle", "toaster", "blender", "coffee grinder", "rice cooker", "hand mixer"),
    "lighting": ("desk lamp", "floor lamp", "reading light", "LED strip", "night light"),
    "audio": ("speaker", "headphones", "earbuds", "turntable", "soundbar"),
    "outdoor": ("camping stove", "tent", "head torch", "sleeping bag", "water filter"),
    "office": ("monitor stand", "label printer", "desk organiser", "paper shredder", "webcam"),
}
_CURRENCIES = ("EUR", "USD", "GBP")
_WAREHOUSES = ("Lyon", "Leeds", "Austin", "Turin", "Gdansk", "Porto", "Ghent")

_TEMPLATES = (
    "The {name} (item code {sku}) from our {category} range costs {price} {currency}; {stock_text} in the {warehouse} warehouse.",
    "{sku}: {name}. Category: {category}. Price {price} {currency}. Stock: {stock_text}.",
    "New in {category}: the {name}, sold at {price} {currency}. Reference {sku}. The {warehouse} depot reports {stock_text}.",
    "Listing {sku} - {name} - {currency} {price} - {stock_text} ({category}).",
    "We sell the {name} for {price} {currency}. It belongs to {category}, has code {sku}, and there are {stock_text}.",
)

_SHIFT_TEMPLATES = (
    "My order {order} arrived with a cracked lid. Can I send it back and when will I get my refund?",
    "How long does delivery to {city} take if I order today before noon?",
    "I was charged twice for order {order}, please help me get one payment reversed.",
    "Do you ship to {city} and how much does express shipping cost there?",
    "I forgot the password of my account and the reset email never arrives. What should I do?",
    "Can I change the delivery address of order {order}? I am moving to {city} next week.",
    "Your courier left my parcel outside in the rain. Who is responsible for the damage?",
    "Is there a student discount, and can it be combined with the winter sale?",
)
_CITIES = ("Madrid", "Oslo", "Nairobi", "Denver", "Kyoto", "Adelaide", "Bogota", "Tallinn")


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str
    price: float
    currency: str
    stock: int

    @property
    def in_stock(self) -> bool:
        return self.stock > 0

    def record(self) -> dict:
        """The expected answer, in the fixed field order."""
        return {**asdict(self), "in_stock": self.in_stock}


def answer_text(product: Product) -> str:
    return json.dumps(product.record(), ensure_ascii=False)


def _stock_text(stock: int, rng: random.Random) -> str:
    if stock == 0:
        return rng.choice(("0 units left", "no units left (sold out)", "0 units"))
    return f"{stock} unit{'s' if stock != 1 else ''} left" if rng.random() < 0.5 else f"{stock} units"


def make_product(rng: random.Random, taken: set[str]) -> Product:
    while True:
        sku = "".join(rng.choice("ABCDEFGHJKLMNPRSTVWXZ") for _ in range(2)) + f"-{rng.randint(1000, 9999)}"
        if sku not in taken:
            taken.add(sku)
            break
    category = rng.choice(sorted(_PRODUCTS))
    brand = rng.choice(_BRAND_HEADS) + rng.choice(_BRAND_TAILS)
    name = f"{brand} {rng.choice(_MODELS)} {rng.choice(_PRODUCTS[category])}"
    price = round(rng.randint(300, 49999) / 100, 2)
    stock = 0 if rng.random() < 0.2 else rng.randint(1, 250)
    return Product(sku, name, category, price, rng.choice(_CURRENCIES), stock)


def describe(product: Product, rng: random.Random) -> str:
    """One catalogue entry in prose; every field of the record is stated in it."""
    template = rng.choice(_TEMPLATES)
    return template.format(
        name=product.name,
        sku=product.sku,
        category=product.category,
        price=f"{product.price:.2f}",
        currency=product.currency,
        stock_text=_stock_text(product.stock, rng),
        warehouse=rng.choice(_WAREHOUSES),
    )


def prompt_for(entry: str) -> str:
    return f"{INSTRUCTION}\n\n{entry}"


def catalogue_examples(n: int, rng: random.Random, taken: set[str]) -> list[dict]:
    rows = []
    for _ in range(n):
        product = make_product(rng, taken)
        rows.append({"prompt": prompt_for(describe(product, rng)), "reference": answer_text(product)})
    return rows


def shifted_prompts(n: int, rng: random.Random) -> list[str]:
    """Customer-support questions: a topic the model was not tuned on."""
    return [
        rng.choice(_SHIFT_TEMPLATES).format(order=rng.randint(100000, 999999), city=rng.choice(_CITIES))
        for _ in range(n)
    ]


@dataclass(frozen=True)
class DatasetFiles:
    train: Path
    """Chat-format JSON lines: {"messages": [user, assistant]}."""
    eval: Path
    """Held-out {"prompt", "reference"} rows on products never seen in training."""
    traffic: Path
    """Held-out catalogue prompts for live traffic, {"prompt", "reference"}."""
    shifted: Path
    """Off-topic prompts for live traffic, {"prompt"}."""


def write_dataset(
    out_dir: Path | str,
    *,
    seed: int = 7,
    train_rows: int = 240,
    eval_rows: int = 8,
    traffic_rows: int = 40,
    shifted_rows: int = 40,
) -> DatasetFiles:
    """Write the four files; products are disjoint across them (no SKU appears twice)."""
    if min(train_rows, eval_rows, traffic_rows, shifted_rows) < 1:
        raise ValueError("every split needs at least one row")
    rng = random.Random(seed)
    taken: set[str] = set()
    train = catalogue_examples(train_rows, rng, taken)
    held_out = catalogue_examples(eval_rows, rng, taken)
    traffic = catalogue_examples(traffic_rows, rng, taken)
    shifted = [{"prompt": p} for p in shifted_prompts(shifted_rows, rng)]
    out = Path(out_dir)
    files = DatasetFiles(out / "train.jsonl", out / "eval.jsonl", out / "traffic.jsonl", out / "shifted.jsonl")
    _write_jsonl(
        files.train,
        [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["reference"]}]}
         for r in train],
    )
    _write_jsonl(files.eval, held_out)
    _write_jsonl(files.traffic, traffic)
    _write_jsonl(files.shifted, shifted)
    return files


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write through a temporary sibling so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path | str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
    return rows
