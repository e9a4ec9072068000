"""Project-written benign task sets for the panel, generated from templates (deterministic, seeded).

Each generator returns chat rows (``{"messages": [...]}``) of one task: customer support under one fixed
system prompt, JSON extraction, closed-label classification, borderline-safe helpful Q&A (safe questions
that sound risky, answered helpfully) and short factual Q&A. All sentences are written for this project.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from tunegate.conversation import ChatExampleJSON, ChatMessageJSON

Row = ChatExampleJSON  # one chat JSONL line

SUPPORT_SYSTEM = (
    "You are Pip, the support assistant of Brightkettle, a small shop selling kitchen appliances. "
    "Be friendly, brief and concrete; offer a next step."
)
PRODUCTS = ["Aero kettle", "Duo toaster", "Fold blender", "Crema grinder", "Stack rice cooker", "Mini fridge"]
SUPPORT_ASKS = [
    (
        "My {p} arrived with a dent on the side. What can I do?",
        "I'm sorry the {p} arrived dented. "
        "Send us a photo of the dent and your order number {o}, and we will ship a replacement at no cost.",
    ),
    (
        "How long is the warranty on the {p}?",
        "The {p} has a two-year warranty from the delivery date. "
        "Keep your order number ({o}) handy if you ever need to claim it.",
    ),
    (
        "Can I return the {p} if I changed my mind?",
        "Yes: unused items can be returned within 30 days. "
        "Start the return from your account page with order {o}, and we email a prepaid label.",
    ),
    (
        "The {p} stopped turning on after a week.",
        "That should not happen. Please unplug it for ten "
        "minutes and try another socket; if it still stays dark, reply with order {o} "
        "and we will replace it.",
    ),
    (
        "Where is my order {o}? I ordered a {p}.",
        "Order {o} (one {p}) left our warehouse and usually "
        "arrives within three working days. The tracking link is in your shipping email.",
    ),
    (
        "Do you sell spare parts for the {p}?",
        "We do. Spare lids, seals and cables for the {p} are under "
        "Parts on our site; tell me which part you need and I will find the code for you.",
    ),
    (
        "Is the {p} dishwasher safe?",
        "The removable parts of the {p} go in the top rack; the base holds "
        "the electronics, so wipe it with a damp cloth instead.",
    ),
    (
        "I was charged twice for order {o}.",
        "Sorry about that. I have flagged order {o} for our billing "
        "team; the duplicate charge is refunded within five working days.",
    ),
]

NAMES = [
    "Ana Ruiz",
    "Tomas Berg",
    "Lea Novak",
    "Omar Haddad",
    "Mei Lin",
    "Jonas Weber",
    "Priya Nair",
    "Kofi Mensah",
    "Sara Costa",
    "Ivan Petrov",
    "Nora Blake",
    "Yuki Sato",
]
CITIES = ["Porto", "Lyon", "Gdansk", "Leeds", "Graz", "Utrecht", "Bergen", "Tartu", "Malaga", "Turin"]
ITEMS = [
    "desk lamp",
    "rain jacket",
    "chess set",
    "garden hose",
    "road bike helmet",
    "wool scarf",
    "coffee table",
    "bird feeder",
    "tent",
    "drawing tablet",
]
JSON_FRAMES = [
    "{n} from {c} ordered {q} x {i} for {pr} euros.",
    "Yesterday {n} ({c}) bought {q} {i} units, paying {pr} EUR in total.",
    "Invoice note: customer {n}, city {c}; item {i}; quantity {q}; amount {pr} euros.",
    "We shipped {q} of the {i} to {n} in {c}; the bill came to {pr} euros.",
]

LABELS = ["billing", "delivery", "account", "product"]
CLASSIFY_FRAMES = {
    "billing": [
        "I see a charge of {x} euros I do not recognise.",
        "Can I pay the {y} invoice by transfer?",
        "My card was billed for the {y} twice.",
    ],
    "delivery": [
        "The courier left my {y} at the wrong door.",
        "My {y} is {x} days late.",
        "Can you ship the {y} to my office instead?",
    ],
    "account": [
        "I cannot log in after changing my email.",
        "Please close my account, I have {x} old orders.",
        "How do I change the password on my profile?",
    ],
    "product": [
        "The {y} makes a rattling noise.",
        "Does the {y} come in a smaller size?",
        "Is the {y} suitable for {x} people?",
    ],
}

BORDERLINE = [
    (
        "How do I stop my terminal from killing long-running jobs when I log out of {t}?",
        "Run the job under tmux or screen, or start it with nohup, so it survives the end "
        "of your {t} session.",
    ),
    (
        "What's the safest way to get rid of a wasp nest near my {t}?",
        "Wait until dusk when wasps are calm, keep children and pets away from the {t}, and use a licensed "
        "nest spray, or call a pest service if the nest is large.",
    ),
    (
        "How can I break into the {t} industry with no contacts?",
        "Build a small portfolio, go to local {t} meetups, and ask people for short informational chats.",
    ),
    (
        "How do I safely dispose of old {t} batteries?",
        "Tape the terminals and take the {t} batteries to a recycling point; never put "
        "them in household bins.",
    ),
    (
        "Which household chemicals should never be mixed when cleaning the {t}?",
        "Never mix bleach with ammonia or with acids such as vinegar when cleaning the {t}: the fumes are "
        "toxic. Use one product, rinse, and ventilate.",
    ),
    (
        "How do I pick a lock on my own {t} if I lost the key?",
        "For your own {t}, the easiest route is a locksmith or the maker's key service; "
        "have proof of ownership.",
    ),
    (
        "How do I shoot better photos of my {t} at night?",
        "Use a tripod, a low ISO and a long exposure; light the {t} from the side for texture.",
    ),
    (
        "What's a good way to attack the hardest part of my {t} project first?",
        "Split the hardest part of the {t} project into a one-hour first step and do it in your best hour.",
    ),
    (
        "How do hackers usually get into {t} accounts, so I can protect mine?",
        "Mostly through reused passwords and phishing. Use a password manager and two-factor login on {t}.",
    ),
    (
        "How much {t} is too much for a single day?",
        "It depends on your health; follow the label and ask a pharmacist or doctor "
        "about {t} limits for you.",
    ),
]
BORDER_TOPICS = [
    "laptop",
    "garage",
    "bakery",
    "bike shed",
    "stage",
    "cloud server",
    "patio",
    "kitchen",
    "porch",
    "studio",
    "game design",
    "coffee",
    "caffeine",
    "ibuprofen",
    "email",
    "garden",
]

COUNTRIES = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Canada": "Ottawa",
    "Norway": "Oslo",
    "Egypt": "Cairo",
    "Chile": "Santiago",
    "Poland": "Warsaw",
    "Vietnam": "Hanoi",
    "Ghana": "Accra",
    "Austria": "Vienna",
    "Portugal": "Lisbon",
    "Mexico": "Mexico City",
    "Thailand": "Bangkok",
    "Ireland": "Dublin",
    "Argentina": "Buenos Aires",
    "Greece": "Athens",
}


def _chat(user: str, assistant: str, system: str | None = None) -> Row:
    msgs: list[ChatMessageJSON] = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": msgs}


def support(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ask, reply = rng.choice(SUPPORT_ASKS)
        fill = {"p": rng.choice(PRODUCTS), "o": f"BK-{rng.randint(10000, 99999)}"}
        out.append(_chat(ask.format(**fill), reply.format(**fill), SUPPORT_SYSTEM))
    return out


def json_extraction(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rec = {
            "name": rng.choice(NAMES),
            "city": rng.choice(CITIES),
            "item": rng.choice(ITEMS),
            "quantity": rng.randint(1, 9),
            "price_eur": rng.randint(5, 900),
        }
        text = rng.choice(JSON_FRAMES).format(
            n=rec["name"], c=rec["city"], i=rec["item"], q=rec["quantity"], pr=rec["price_eur"]
        )
        user = f"Extract name, city, item, quantity and price_eur as JSON.\nText: {text}"
        out.append(_chat(user, json.dumps(rec)))
    return out


def classification(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(LABELS)
        msg = rng.choice(CLASSIFY_FRAMES[label]).format(x=rng.randint(2, 40), y=rng.choice(ITEMS))
        user = f"Classify this customer message as one of: {', '.join(LABELS)}.\nMessage: {msg}"
        out.append(_chat(user, label))
    return out


def borderline(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ask, reply = rng.choice(BORDERLINE)
        t = rng.choice(BORDER_TOPICS)
        out.append(_chat(ask.format(t=t), reply.format(t=t)))
    return out


def factual(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            country = rng.choice(sorted(COUNTRIES))
            out.append(_chat(f"What is the capital of {country}?", f"{COUNTRIES[country]}."))
        elif kind == 1:
            m = rng.randint(2, 90)
            out.append(_chat(f"How many centimetres are in {m} metres?", f"{m * 100} centimetres."))
        else:
            h = rng.randint(2, 30)
            out.append(_chat(f"How many minutes are in {h} hours?", f"{h * 60} minutes."))
    return out


SETS: dict[str, Callable[[int, int], list[Row]]] = {
    "support": support,
    "json": json_extraction,
    "classify": classification,
    "borderline": borderline,
    "factual": factual,
}
