"""Deterministic generator for the infosft sample data sets.

Writes two JSONL files next to this script:

* ``sft_sample.jsonl`` -- 200 supervised fine-tuning rows (170 grade-school
  style math word problems with step-by-step integer solutions ending in
  ``#### <answer>``, and 30 short Python coding tasks), interleaved with a
  seeded shuffle.
* ``prior.jsonl`` -- 60 hand-written "prior capability" rows (simple facts,
  rewriting, summarizing, definitions, lists, polite replies) used to measure
  forgetting.

Every row has the fields ``prompt``, ``response`` and ``task``.  All math is
computed here and re-checked by parsing each ``a op b = c`` statement in the
solutions; every code answer is executed and called on a sample input.  Only
the standard library is used and the output is byte-identical across runs.

Usage (from the repository root)::

    python sample_data/make_sample.py
"""

from __future__ import annotations

import json
import os
import random
import re
from fractions import Fraction
from pathlib import Path

SEED = 20240531
N_MATH = 170
N_CODE = 30
MAX_PROMPT_CHARS = 400
MAX_RESPONSE_CHARS = 600

OUT_DIR = Path(__file__).resolve().parent
SFT_PATH = OUT_DIR / "sft_sample.jsonl"
PRIOR_PATH = OUT_DIR / "prior.jsonl"

# (name, subject pronoun, possessive pronoun)
PEOPLE = [
    ("Maya", "she", "her"), ("Leo", "he", "his"), ("Priya", "she", "her"),
    ("Omar", "he", "his"), ("Ella", "she", "her"), ("Mateo", "he", "his"),
    ("Hana", "she", "her"), ("Kofi", "he", "his"), ("Sofia", "she", "her"),
    ("Liam", "he", "his"), ("Aisha", "she", "her"), ("Noah", "he", "his"),
    ("Zoe", "she", "her"), ("Ravi", "he", "his"), ("Lucia", "she", "her"),
    ("Ethan", "he", "his"), ("Nora", "she", "her"), ("Jamal", "he", "his"),
    ("Ingrid", "she", "her"), ("Tomas", "he", "his"), ("Mei", "she", "her"),
    ("Diego", "he", "his"), ("Fatima", "she", "her"), ("Owen", "he", "his"),
]


def _person(rng: random.Random) -> tuple[str, str, str, str]:
    """Return (name, he/she, He/She, his/her)."""
    name, subj, poss = rng.choice(PEOPLE)
    return name, subj, subj.capitalize(), poss


def His(poss: str) -> str:  # noqa: N802 - reads naturally in templates
    """Capitalized possessive pronoun: his -> His."""
    return poss.capitalize()


def he(He: str) -> str:  # noqa: N803 - reads naturally in templates
    """Lower-case subject pronoun: She -> she."""
    return He.lower()


def _solution(steps: list[str], answer: int) -> str:
    return "\n".join(steps + [f"#### {answer}"])


# ---------------------------------------------------------------------------
# Math problem families.  Each returns (prompt, response).
# ---------------------------------------------------------------------------

SHOP_ITEMS = [
    ("notebooks", 2, 6), ("pens", 1, 4), ("apples", 1, 3), ("comic books", 3, 9),
    ("packs of stickers", 2, 5), ("bottles of juice", 2, 4), ("candles", 3, 8),
    ("paintbrushes", 2, 7), ("muffins", 2, 4), ("toy cars", 4, 10),
    ("bags of chips", 1, 3), ("T-shirts", 8, 15), ("flower pots", 4, 9),
]


def shopping_change(rng: random.Random) -> tuple[str, str]:
    name, _, He, _ = _person(rng)
    (item1, lo1, hi1), (item2, lo2, hi2) = rng.sample(SHOP_ITEMS, 2)
    a, p1 = rng.randint(2, 6), rng.randint(lo1, hi1)
    b, p2 = rng.randint(2, 5), rng.randint(lo2, hi2)
    cost1, cost2 = a * p1, b * p2
    total = cost1 + cost2
    bill = rng.choice([x for x in (20, 50, 100, 200) if x > total][:2])
    change = bill - total
    prompt = (
        f"{name} buys {a} {item1} that cost ${p1} each and {b} {item2} that cost "
        f"${p2} each. {He} pays with a ${bill} bill. How much change, in dollars, "
        f"does {He.lower()} get back?"
    )
    steps = [
        f"The {item1} cost {a} * {p1} = {cost1} dollars.",
        f"The {item2} cost {b} * {p2} = {cost2} dollars.",
        f"{He} spends {cost1} + {cost2} = {total} dollars in total.",
        f"{He} gets back {bill} - {total} = {change} dollars in change.",
    ]
    return prompt, _solution(steps, change)


UNIT_ITEMS = [
    ("granola bar", "granola bars"), ("pencil", "pencils"), ("lemon", "lemons"),
    ("bottle of water", "bottles of water"), ("bar of soap", "bars of soap"),
    ("tennis ball", "tennis balls"), ("cupcake", "cupcakes"), ("battery", "batteries"),
]
MACHINES = [
    ("machine", "bottles", "fills"), ("printer", "pages", "prints"),
    ("bakery oven", "loaves of bread", "bakes"), ("factory line", "toys", "makes"),
    ("robot", "boxes", "packs"),
]


def unit_rate(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        single, plural = rng.choice(UNIT_ITEMS)
        unit, n = rng.randint(1, 9), rng.randint(2, 12)
        m = rng.choice([x for x in range(3, 31) if x != n])
        cost = unit * n
        answer = unit * m
        prompt = (
            f"A pack of {n} {plural} costs ${cost}. At the same price per item, "
            f"how many dollars would {m} {plural} cost?"
        )
        steps = [
            f"One {single} costs {cost} / {n} = {unit} dollars.",
            f"So {m} {plural} cost {m} * {unit} = {answer} dollars.",
        ]
    else:
        machine, things, verb = rng.choice(MACHINES)
        rate, h = rng.randint(6, 60), rng.randint(2, 8)
        h2 = rng.choice([x for x in range(2, 13) if x != h])
        made = rate * h
        answer = rate * h2
        prompt = (
            f"A {machine} {verb} {made} {things} in {h} hours. Working at the same "
            f"rate, how many {things} does it make in {h2} hours?"
        )
        steps = [
            f"Each hour it makes {made} / {h} = {rate} {things}.",
            f"In {h2} hours it makes {rate} * {h2} = {answer} {things}.",
        ]
    return prompt, _solution(steps, answer)


SALE_ITEMS = ["jacket", "pair of shoes", "backpack", "lamp", "video game",
              "blender", "watch", "chair", "suitcase", "guitar stand"]
PLURAL_SALE = {"jacket": "jackets", "pair of shoes": "pairs of shoes",
               "backpack": "backpacks", "lamp": "lamps", "video game": "video games",
               "blender": "blenders", "watch": "watches", "chair": "chairs",
               "suitcase": "suitcases", "guitar stand": "guitar stands"}


def percent_discount(rng: random.Random) -> tuple[str, str]:
    name, _, He, _ = _person(rng)
    if rng.random() < 0.6:
        item = rng.choice(SALE_ITEMS)
        price = 20 * rng.randint(2, 15)
        pct = rng.choice([10, 15, 20, 25, 30, 40, 50])
        qty = rng.randint(2, 4)
        off = price * pct // 100
        sale = price - off
        total = qty * sale
        prompt = (
            f"A {item} normally costs ${price}. This week the store takes {pct}% off. "
            f"{name} buys {qty} {PLURAL_SALE[item]} during the sale. How many dollars "
            f"does {He.lower()} pay?"
        )
        steps = [
            f"The discount on one {item} is {price} * {pct} / 100 = {off} dollars.",
            f"The sale price is {price} - {off} = {sale} dollars.",
            f"For {qty} {PLURAL_SALE[item]} {He.lower()} pays {qty} * {sale} = {total} dollars.",
        ]
        answer = total
    else:
        bill = 20 * rng.randint(2, 10)
        tip_pct = rng.choice([10, 15, 20, 25])
        people = rng.choice([p for p in (2, 3, 4, 5, 6) if (bill + bill * tip_pct // 100) % p == 0]
                            or [1])
        tip = bill * tip_pct // 100
        total = bill + tip
        if people == 1:
            prompt = (
                f"{name}'s dinner bill is ${bill}. {He} adds a {tip_pct}% tip. "
                f"How many dollars does {He.lower()} pay in total?"
            )
            steps = [
                f"The tip is {bill} * {tip_pct} / 100 = {tip} dollars.",
                f"The total is {bill} + {tip} = {total} dollars.",
            ]
            answer = total
        else:
            share = total // people
            company = "a friend" if people == 2 else f"{people - 1} friends"
            prompt = (
                f"{name} and {company} have dinner. The bill is ${bill}, and they "
                f"add a {tip_pct}% tip. If they split the total equally, how many dollars "
                f"does each person pay?"
            )
            steps = [
                f"The tip is {bill} * {tip_pct} / 100 = {tip} dollars.",
                f"The total is {bill} + {tip} = {total} dollars.",
                f"Each of the {people} people pays {total} / {people} = {share} dollars.",
            ]
            answer = share
    return prompt, _solution(steps, answer)


RELATIVES = ["uncle", "aunt", "grandmother", "grandfather", "neighbor", "teacher", "coach"]


def ages(rng: random.Random) -> tuple[str, str]:
    name, _, He, his = _person(rng)
    if rng.random() < 0.5:
        rel1, rel2 = rng.sample(RELATIVES, 2)
        age, k = rng.randint(4, 12), rng.randint(2, 5)
        older = age * k
        d = rng.randint(2, min(15, older - 1))
        younger = older - d
        total = age + older + younger
        prompt = (
            f"{name} is {age} years old. {His(his)} {rel1} is {k} times as old as "
            f"{name}, and {his} {rel2} is {d} years younger than the {rel1}. What is "
            f"the sum of their three ages?"
        )
        steps = [
            f"The {rel1} is {age} * {k} = {older} years old.",
            f"The {rel2} is {older} - {d} = {younger} years old.",
            f"Together they are {age} + {older} + {younger} = {total} years old.",
        ]
        answer = total
    else:
        sib_age, k, years = rng.randint(3, 10), rng.randint(2, 4), rng.randint(2, 12)
        sibling = rng.choice(["sister", "brother", "cousin"])
        now = sib_age * k
        later = now + years
        prompt = (
            f"{name} is {k} times as old as {his} {sibling}. {His(his)} {sibling} is "
            f"{sib_age} years old. How old will {name} be in {years} years?"
        )
        steps = [
            f"{name} is {sib_age} * {k} = {now} years old now.",
            f"In {years} years {name} will be {now} + {years} = {later} years old.",
        ]
        answer = later
    return prompt, _solution(steps, answer)


TRAVELERS = [("cyclist", "rides"), ("truck driver", "drives"), ("runner", "runs"),
             ("sailboat", "sails"), ("family car", "drives"), ("hiker", "walks")]


def speed_distance_time(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.55:
        who, verb = rng.choice(TRAVELERS)
        fast = who in ("truck driver", "family car")
        lo, hi = (40, 70) if fast else (3, 18)
        s1, s2 = rng.randint(lo, hi), rng.randint(lo, hi)
        h1, h2 = rng.randint(2, 5), rng.randint(2, 4)
        d1, d2 = s1 * h1, s2 * h2
        total = d1 + d2
        prompt = (
            f"A {who} {verb} at {s1} miles per hour for {h1} hours, and then at {s2} "
            f"miles per hour for {h2} hours. How many miles does the {who} cover in total?"
        )
        steps = [
            f"The first part is {s1} * {h1} = {d1} miles.",
            f"The second part is {s2} * {h2} = {d2} miles.",
            f"In total that is {d1} + {d2} = {total} miles.",
        ]
        answer = total
    else:
        speed = rng.choice([40, 45, 50, 55, 60, 65, 70, 75, 80])
        hours = rng.randint(2, 9)
        stops = rng.randint(2, 3)
        dist = speed * hours
        total = hours + stops
        prompt = (
            f"A train travels {dist} miles at a steady {speed} miles per hour. Along the "
            f"way it also spends {stops} hours stopped at stations. How many hours does "
            f"the whole trip take?"
        )
        steps = [
            f"Moving takes {dist} / {speed} = {hours} hours.",
            f"With the stops the trip takes {hours} + {stops} = {total} hours.",
        ]
        answer = total
    return prompt, _solution(steps, answer)


SHARE_THINGS = ["stickers", "marbles", "cookies", "trading cards", "seashells",
                "crayons", "strawberries", "beads"]


def splitting_sharing(rng: random.Random) -> tuple[str, str]:
    name, _, He, _ = _person(rng)
    thing = rng.choice(SHARE_THINGS)
    each, k, keep = rng.randint(2, 12), rng.randint(2, 8), rng.randint(2, 15)
    rest = k * each
    total = keep + rest
    prompt = (
        f"{name} has {total} {thing}. {He} keeps {keep} for {'herself' if He == 'She' else 'himself'} "
        f"and shares the rest equally among {k} friends. How many {thing} does each "
        f"friend get?"
    )
    steps = [
        f"{He} shares {total} - {keep} = {rest} {thing}.",
        f"Each friend gets {rest} / {k} = {each} {thing}.",
    ]
    return prompt, _solution(steps, each)


def fence_perimeter(rng: random.Random) -> tuple[str, str]:
    place = rng.choice(["garden", "playground", "dog run", "vegetable patch", "paddock"])
    length = rng.randint(8, 30)
    width = rng.randint(4, length - 1)
    cost = rng.randint(2, 12)
    half = length + width
    perim = 2 * half
    total = perim * cost
    prompt = (
        f"A rectangular {place} is {length} meters long and {width} meters wide. Fencing "
        f"costs ${cost} per meter. How many dollars will it cost to put a fence around "
        f"the whole {place}?"
    )
    steps = [
        f"The length and width add up to {length} + {width} = {half} meters.",
        f"The perimeter is 2 * {half} = {perim} meters.",
        f"The fence costs {perim} * {cost} = {total} dollars.",
    ]
    return prompt, _solution(steps, total)


def floor_area(rng: random.Random) -> tuple[str, str]:
    name, _, He, his = _person(rng)
    room = rng.choice(["living room", "bedroom", "kitchen", "studio", "basement"])
    L, W = rng.randint(10, 20), rng.randint(8, 16)
    l, w = rng.randint(2, 6), rng.randint(2, 5)
    price = rng.randint(2, 6)
    area, rug = L * W, l * w
    left = area - rug
    total = left * price
    prompt = (
        f"{name}'s {room} floor is {L} feet by {W} feet. A built-in cabinet covers a "
        f"{l} foot by {w} foot section. {He} wants to tile the rest of the floor, and "
        f"tile costs ${price} per square foot. How many dollars will the tile cost?"
    )
    steps = [
        f"The floor is {L} * {W} = {area} square feet.",
        f"The cabinet covers {l} * {w} = {rug} square feet.",
        f"{He} needs to tile {area} - {rug} = {left} square feet.",
        f"The tile costs {left} * {price} = {total} dollars.",
    ]
    return prompt, _solution(steps, total)


JOBS = ["at a bookstore", "at a cafe", "as a lifeguard", "at a garden center",
        "as a tutor", "at a bike shop", "at the library"]


def wages(rng: random.Random) -> tuple[str, str]:
    name, _, He, _ = _person(rng)
    job = rng.choice(JOBS)
    hours, days, wage = rng.randint(3, 8), rng.randint(3, 6), rng.randint(9, 25)
    bonus = 5 * rng.randint(2, 20)
    total_hours = hours * days
    pay = total_hours * wage
    total = pay + bonus
    prompt = (
        f"{name} works {job} for {hours} hours a day, {days} days a week, and earns "
        f"${wage} per hour. This week {he(He)} also gets a ${bonus} bonus. How many "
        f"dollars does {he(He)} earn this week?"
    )
    steps = [
        f"{He} works {hours} * {days} = {total_hours} hours.",
        f"{He} earns {total_hours} * {wage} = {pay} dollars for those hours.",
        f"With the bonus {he(He)} earns {pay} + {bonus} = {total} dollars.",
    ]
    return prompt, _solution(steps, total)


GROUPS = [
    ("students in a class", "walk to school", "ride bikes", "take the bus"),
    ("members of a choir", "sing soprano", "sing alto", "sing tenor or bass"),
    ("campers", "chose swimming", "chose archery", "chose crafts"),
    ("apples in a crate", "are red", "are yellow", "are green"),
    ("guests at a party", "ordered pizza", "ordered salad", "ordered pasta"),
]


def fractions_of_group(rng: random.Random) -> tuple[str, str]:
    group, first, second, third = rng.choice(GROUPS)
    a, b = rng.choice([2, 3, 4, 5]), rng.choice([2, 3, 4])
    k = rng.randint(1, max(1, 80 // (a * b)))
    n = a * b * k
    if n < 12:
        n = a * b * (12 // (a * b) + 1)
    g1 = n // a
    rest = n - g1
    g2 = rest // b
    g3 = rest - g2
    noun = group.split(" ")[0]
    prompt = (
        f"There are {n} {group}. 1/{a} of them {first}. Of the remaining {noun}, 1/{b} "
        f"{second} and the rest {third}. How many {third}?"
    )
    steps = [
        f"First, {n} / {a} = {g1} of them {first}.",
        f"That leaves {n} - {g1} = {rest}.",
        f"Of those, {rest} / {b} = {g2} {second}.",
        f"So {rest} - {g2} = {g3} {third}.",
    ]
    return prompt, _solution(steps, g3)


SHOPS = [("bakery", "muffins", "trays"), ("bookstore", "books", "boxes"),
         ("toy store", "puzzles", "cartons"), ("farm stand", "melons", "crates"),
         ("pet shop", "bags of food", "pallets"), ("florist", "roses", "buckets")]


def inventory(rng: random.Random) -> tuple[str, str]:
    shop, things, containers = rng.choice(SHOPS)
    sold1, sold2 = rng.randint(10, 60), rng.randint(10, 60)
    start = sold1 + sold2 + rng.randint(5, 80)
    boxes, per = rng.randint(2, 6), rng.randint(6, 24)
    sold = sold1 + sold2
    left = start - sold
    delivered = boxes * per
    total = left + delivered
    prompt = (
        f"A {shop} starts the day with {start} {things}. It sells {sold1} in the morning "
        f"and {sold2} in the afternoon. Then a delivery arrives with {boxes} {containers} "
        f"of {per} {things} each. How many {things} does the {shop} have now?"
    )
    steps = [
        f"It sells {sold1} + {sold2} = {sold} {things}.",
        f"That leaves {start} - {sold} = {left} {things}.",
        f"The delivery brings {boxes} * {per} = {delivered} {things}.",
        f"Now it has {left} + {delivered} = {total} {things}.",
    ]
    return prompt, _solution(steps, total)


GOALS = ["bike", "tablet", "skateboard", "telescope", "pair of headphones",
         "guitar", "camping tent", "board game collection"]


def savings(rng: random.Random) -> tuple[str, str]:
    name, _, He, _ = _person(rng)
    start = rng.randint(5, 60)
    if rng.random() < 0.5:
        weekly, weeks = rng.randint(5, 25), rng.randint(3, 12)
        need = weekly * weeks
        goal = start + need
        thing = rng.choice(GOALS)
        prompt = (
            f"{name} has ${start} saved and wants to buy a {thing} that costs ${goal}. "
            f"If {he(He)} saves ${weekly} every week, how many weeks will it take to "
            f"have exactly enough?"
        )
        steps = [
            f"{He} still needs {goal} - {start} = {need} dollars.",
            f"That takes {need} / {weekly} = {weeks} weeks.",
        ]
        answer = weeks
    else:
        weekly, weeks = rng.randint(4, 20), rng.randint(4, 12)
        saved = weekly * weeks
        spend = rng.randint(10, start + saved - 1)
        have = start + saved
        left = have - spend
        gift = rng.choice(["a birthday gift", "concert tickets", "a new jacket", "a plant"])
        prompt = (
            f"{name} has ${start} in a piggy bank. {He} adds ${weekly} each week for "
            f"{weeks} weeks, then spends ${spend} on {gift}. How many dollars are left?"
        )
        steps = [
            f"{He} adds {weekly} * {weeks} = {saved} dollars.",
            f"{He} then has {start} + {saved} = {have} dollars.",
            f"After spending, {he(He)} has {have} - {spend} = {left} dollars left.",
        ]
        answer = left
    return prompt, _solution(steps, answer)


# Both ingredients share a unit so that adding them makes sense.
RECIPES = [("cookies", "cups of flour", "cups of sugar", "cups"),
           ("pancakes", "cups of flour", "cups of milk", "cups"),
           ("muffins", "cups of oats", "cups of yogurt", "cups"),
           ("dinner rolls", "cups of flour", "cups of warm water", "cups"),
           ("smoothies", "cups of berries", "cups of yogurt", "cups"),
           ("omelets", "eggs", "egg whites", "eggs"),
           ("salad dressing jars", "tablespoons of olive oil", "tablespoons of vinegar", "tablespoons")]


def recipe_scaling(rng: random.Random) -> tuple[str, str]:
    dish, ing1, ing2, unit = rng.choice(RECIPES)
    batch = rng.choice([4, 6, 8, 10, 12, 24])
    factor = rng.randint(2, 6)
    q1, q2 = rng.randint(2, 5), rng.randint(2, 4)
    want = batch * factor
    a1, a2 = q1 * factor, q2 * factor
    total = a1 + a2
    prompt = (
        f"A recipe for {batch} {dish} uses {q1} {ing1} and {q2} {ing2}. How many "
        f"{ing1} and {ing2} are needed in total to make {want} {dish}?"
    )
    steps = [
        f"{want} {dish} is {want} / {batch} = {factor} batches.",
        f"That needs {q1} * {factor} = {a1} {ing1}.",
        f"It also needs {q2} * {factor} = {a2} {ing2}.",
        f"Together that is {a1} + {a2} = {total} {unit}.",
    ]
    return prompt, _solution(steps, total)


def reading_pages(rng: random.Random) -> tuple[str, str]:
    name, _, He, _ = _person(rng)
    r1, d1 = rng.randint(8, 30), rng.randint(3, 8)
    r2, d2 = rng.randint(10, 40), rng.randint(2, 8)
    read = r1 * d1
    rest = r2 * d2
    pages = read + rest
    prompt = (
        f"A novel has {pages} pages. {name} reads {r1} pages a day for {d1} days. After "
        f"that {he(He)} reads {r2} pages a day. How many more days does {he(He)} need to "
        f"finish the book?"
    )
    steps = [
        f"In the first {d1} days {he(He)} reads {r1} * {d1} = {read} pages.",
        f"{He} has {pages} - {read} = {rest} pages left.",
        f"That takes {rest} / {r2} = {d2} more days.",
    ]
    return prompt, _solution(steps, d2)


def score_average(rng: random.Random) -> tuple[str, str]:
    name, _, He, his = _person(rng)
    while True:
        target = rng.randint(70, 92)
        scores = [rng.randint(60, 100) for _ in range(3)]
        need = 4 * target - sum(scores)
        if 60 <= need <= 100:
            break
    s1, s2, s3 = scores
    points = target * 4
    have = s1 + s2 + s3
    prompt = (
        f"{name} scored {s1}, {s2}, and {s3} on {his} first three tests. What score "
        f"does {he(He)} need on the fourth test to average exactly {target} over all four?"
    )
    steps = [
        f"An average of {target} over 4 tests needs {target} * 4 = {points} points.",
        f"So far {he(He)} has {s1} + {s2} + {s3} = {have} points.",
        f"{He} needs {points} - {have} = {need} on the fourth test.",
    ]
    return prompt, _solution(steps, need)


TICKETS = [("zoo", 10, 20, 4, 12), ("museum", 8, 18, 3, 10), ("aquarium", 15, 30, 6, 15),
           ("movie theater", 9, 15, 5, 9), ("water park", 20, 35, 10, 20)]


def tickets(rng: random.Random) -> tuple[str, str]:
    place, alo, ahi, clo, chi = rng.choice(TICKETS)
    adult, child = rng.randint(alo, ahi), rng.randint(clo, chi)
    n_a, n_c = rng.randint(2, 4), rng.randint(2, 6)
    parking = rng.randint(5, 15)
    ca, cc = n_a * adult, n_c * child
    tix = ca + cc
    total = tix + parking
    prompt = (
        f"Tickets to the {place} cost ${adult} for adults and ${child} for children. A "
        f"group of {n_a} adults and {n_c} children visits, and they also pay ${parking} "
        f"for parking. How many dollars do they spend altogether?"
    )
    steps = [
        f"Adult tickets cost {n_a} * {adult} = {ca} dollars.",
        f"Child tickets cost {n_c} * {child} = {cc} dollars.",
        f"All tickets cost {ca} + {cc} = {tix} dollars.",
        f"With parking they spend {tix} + {parking} = {total} dollars.",
    ]
    return prompt, _solution(steps, total)


MATH_FAMILIES = [
    shopping_change, unit_rate, percent_discount, ages, speed_distance_time,
    splitting_sharing, fence_perimeter, floor_area, wages, fractions_of_group,
    inventory, savings, recipe_scaling, reading_pages, score_average, tickets,
]

_EQ_RE = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")


def check_math_response(response: str) -> None:
    """Re-verify every ``a op b = c`` statement and the final answer line."""
    lines = response.split("\n")
    assert 3 <= len(lines) <= 6, response
    assert lines[-1].startswith("#### "), response
    answer = int(lines[-1][5:])
    last = None
    for line in lines[:-1]:
        eqs = _EQ_RE.findall(line)
        assert eqs, f"step without arithmetic: {line!r}"
        for expr, result in eqs:
            value = eval(  # noqa: S307 - expr matched by a digits/operators regex
                re.sub(r"\d+", lambda m: f"F({m.group()})", expr), {"F": Fraction}
            )
            assert value.denominator == 1 and value == int(result), line
            last = int(result)
    assert last == answer, response
    assert "." not in re.sub(r"\.(\s|$)", " ", response), "no decimals allowed"


def make_math_rows(rng: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    i = 0
    while len(rows) < n:
        family = MATH_FAMILIES[i % len(MATH_FAMILIES)]
        prompt, response = family(rng)
        if prompt in seen:
            continue
        i += 1
        check_math_response(response)
        seen.add(prompt)
        rows.append({"prompt": prompt, "response": response, "task": "math"})
    return rows


# ---------------------------------------------------------------------------
# Code tasks.  Each task has a code template and two naming variants.
# ---------------------------------------------------------------------------

CODE_TASKS = [
    {
        "desc": "returns the string {x} reversed",
        "explain": "Slicing with a step of -1 walks the string backwards and builds the reversed copy.",
        "code": "def {fn}({x}):\n    return {x}[::-1]\n",
        "variants": [
            {"fn": "reverse_string", "x": "s", "args": ("hello",), "out": "olleh"},
            {"fn": "reversed_text", "x": "text", "args": ("Python",), "out": "nohtyP"},
        ],
    },
    {
        "desc": "counts the vowels (a, e, i, o, u, case-insensitive) in the string {x}",
        "explain": "Lower-case the text once, then count the characters that appear in the vowel set.",
        "code": "def {fn}({x}):\n    vowels = set(\"aeiou\")\n    return sum(1 for ch in {x}.lower() if ch in vowels)\n",
        "variants": [
            {"fn": "count_vowels", "x": "s", "args": ("Programming",), "out": 3},
            {"fn": "vowel_count", "x": "word", "args": ("EDUCATION",), "out": 5},
        ],
    },
    {
        "desc": "returns a list of the FizzBuzz strings for the numbers 1 to {x}",
        "explain": "Loop from 1 to the limit and pick the word from divisibility by 3 and 5, falling back to the number itself.",
        "code": (
            "def {fn}({x}):\n    result = []\n    for i in range(1, {x} + 1):\n"
            "        if i % 15 == 0:\n            result.append(\"FizzBuzz\")\n"
            "        elif i % 3 == 0:\n            result.append(\"Fizz\")\n"
            "        elif i % 5 == 0:\n            result.append(\"Buzz\")\n"
            "        else:\n            result.append(str(i))\n    return result\n"
        ),
        "variants": [
            {"fn": "fizzbuzz", "x": "n", "args": (5,), "out": ["1", "2", "Fizz", "4", "Buzz"]},
            {"fn": "fizzbuzz_list", "x": "limit", "args": (15,),
             "out": ["1", "2", "Fizz", "4", "Buzz", "Fizz", "7", "8", "Fizz", "Buzz",
                     "11", "Fizz", "13", "14", "FizzBuzz"]},
        ],
    },
    {
        "desc": "returns the factorial of the non-negative integer {x}",
        "explain": "Multiply an accumulator by every integer from 2 up to the input; the factorial of 0 and 1 is 1.",
        "code": "def {fn}({x}):\n    result = 1\n    for i in range(2, {x} + 1):\n        result *= i\n    return result\n",
        "variants": [
            {"fn": "factorial", "x": "n", "args": (5,), "out": 120},
            {"fn": "fact", "x": "k", "args": (0,), "out": 1},
        ],
    },
    {
        "desc": "checks whether the string {x} is a palindrome, ignoring case and non-alphanumeric characters",
        "explain": "Keep only the letters and digits in lower case, then compare the cleaned string with its reverse.",
        "code": (
            "def {fn}({x}):\n    cleaned = [ch.lower() for ch in {x} if ch.isalnum()]\n"
            "    return cleaned == cleaned[::-1]\n"
        ),
        "variants": [
            {"fn": "is_palindrome", "x": "s", "args": ("A man, a plan, a canal: Panama",), "out": True},
            {"fn": "palindrome_check", "x": "phrase", "args": ("Hello, world",), "out": False},
        ],
    },
    {
        "desc": "returns the running (cumulative) sum of the list of numbers {x}",
        "explain": "Keep a running total and append it after adding each number.",
        "code": (
            "def {fn}({x}):\n    total = 0\n    out = []\n    for value in {x}:\n"
            "        total += value\n        out.append(total)\n    return out\n"
        ),
        "variants": [
            {"fn": "running_sum", "x": "nums", "args": ([1, 2, 3, 4],), "out": [1, 3, 6, 10]},
            {"fn": "cumulative_sum", "x": "values", "args": ([5, -2, 7],), "out": [5, 3, 10]},
        ],
    },
    {
        "desc": "flattens an arbitrarily nested list {x} into a single flat list",
        "explain": "Recurse into every element that is itself a list and extend the result with what comes back.",
        "code": (
            "def {fn}({x}):\n    flat = []\n    for item in {x}:\n"
            "        if isinstance(item, list):\n            flat.extend({fn}(item))\n"
            "        else:\n            flat.append(item)\n    return flat\n"
        ),
        "variants": [
            {"fn": "flatten", "x": "items", "args": ([1, [2, [3, 4]], 5],), "out": [1, 2, 3, 4, 5]},
            {"fn": "flatten_list", "x": "nested", "args": ([[1, 2], [], [3, [4]]],), "out": [1, 2, 3, 4]},
        ],
    },
    {
        "desc": "returns a dictionary mapping each lower-cased word in the string {x} to how many times it appears",
        "explain": "Split the text on whitespace, lower-case each word and count it in a dictionary.",
        "code": (
            "def {fn}({x}):\n    counts = {{}}\n    for word in {x}.lower().split():\n"
            "        counts[word] = counts.get(word, 0) + 1\n    return counts\n"
        ),
        "variants": [
            {"fn": "word_frequency", "x": "text", "args": ("the cat and the hat",),
             "out": {"the": 2, "cat": 1, "and": 1, "hat": 1}},
            {"fn": "count_words", "x": "sentence", "args": ("Go go GO stop",), "out": {"go": 3, "stop": 1}},
        ],
    },
    {
        "desc": "returns the greatest common divisor of the non-negative integers {x} and {y}",
        "explain": "Euclid's algorithm replaces the pair with the smaller number and the remainder until the remainder is zero.",
        "code": "def {fn}({x}, {y}):\n    while {y}:\n        {x}, {y} = {y}, {x} % {y}\n    return {x}\n",
        "variants": [
            {"fn": "gcd", "x": "a", "y": "b", "args": (48, 18), "out": 6},
            {"fn": "greatest_common_divisor", "x": "m", "y": "n", "args": (17, 5), "out": 1},
        ],
    },
    {
        "desc": "performs binary search for {y} in the sorted list {x} and returns its index, or -1 if it is missing",
        "explain": "Repeatedly halve the search window by comparing the middle element with the target.",
        "code": (
            "def {fn}({x}, {y}):\n    lo, hi = 0, len({x}) - 1\n    while lo <= hi:\n"
            "        mid = (lo + hi) // 2\n        if {x}[mid] == {y}:\n            return mid\n"
            "        if {x}[mid] < {y}:\n            lo = mid + 1\n        else:\n"
            "            hi = mid - 1\n    return -1\n"
        ),
        "variants": [
            {"fn": "binary_search", "x": "arr", "y": "target", "args": ([1, 3, 5, 7, 9], 7), "out": 3},
            {"fn": "find_index", "x": "sorted_nums", "y": "value", "args": ([2, 4, 6, 8], 5), "out": -1},
        ],
    },
    {
        "desc": "returns the largest number in the non-empty list {x} without using the built-in max",
        "explain": "Start with the first element and replace it whenever a larger value shows up.",
        "code": (
            "def {fn}({x}):\n    best = {x}[0]\n    for value in {x}[1:]:\n"
            "        if value > best:\n            best = value\n    return best\n"
        ),
        "variants": [
            {"fn": "find_max", "x": "nums", "args": ([3, 9, 2, 7],), "out": 9},
            {"fn": "largest", "x": "numbers", "args": ([-5, -1, -8],), "out": -1},
        ],
    },
    {
        "desc": "returns a list of the first {x} Fibonacci numbers, starting from 0",
        "explain": "Keep the last two numbers and append the current one while stepping forward {x} times.",
        "code": (
            "def {fn}({x}):\n    seq = []\n    a, b = 0, 1\n    for _ in range({x}):\n"
            "        seq.append(a)\n        a, b = b, a + b\n    return seq\n"
        ),
        "variants": [
            {"fn": "fibonacci", "x": "n", "args": (7,), "out": [0, 1, 1, 2, 3, 5, 8]},
            {"fn": "fib_sequence", "x": "count", "args": (3,), "out": [0, 1, 1]},
        ],
    },
    {
        "desc": "returns True if the integer {x} is prime and False otherwise",
        "explain": "Numbers below 2 are not prime; otherwise trial-divide by every candidate up to the square root.",
        "code": (
            "def {fn}({x}):\n    if {x} < 2:\n        return False\n    i = 2\n"
            "    while i * i <= {x}:\n        if {x} % i == 0:\n            return False\n"
            "        i += 1\n    return True\n"
        ),
        "variants": [
            {"fn": "is_prime", "x": "n", "args": (29,), "out": True},
            {"fn": "check_prime", "x": "num", "args": (1,), "out": False},
        ],
    },
    {
        "desc": "removes duplicates from the list {x} while keeping the first occurrence of each item in order",
        "explain": "Track the items already seen in a set and keep an element only the first time it appears.",
        "code": (
            "def {fn}({x}):\n    seen = set()\n    out = []\n    for item in {x}:\n"
            "        if item not in seen:\n            seen.add(item)\n            out.append(item)\n"
            "    return out\n"
        ),
        "variants": [
            {"fn": "dedupe", "x": "items", "args": ([3, 1, 3, 2, 1],), "out": [3, 1, 2]},
            {"fn": "unique_in_order", "x": "values", "args": (["a", "b", "a"],), "out": ["a", "b"]},
        ],
    },
    {
        "desc": "returns the sum of the decimal digits of the non-negative integer {x}",
        "explain": "Peel off the last digit with % 10 and drop it with // 10 until nothing is left.",
        "code": (
            "def {fn}({x}):\n    total = 0\n    while {x} > 0:\n        total += {x} % 10\n"
            "        {x} //= 10\n    return total\n"
        ),
        "variants": [
            {"fn": "digit_sum", "x": "n", "args": (1234,), "out": 10},
            {"fn": "sum_of_digits", "x": "number", "args": (9005,), "out": 14},
        ],
    },
]

CODE_PROMPTS = [
    "Write a Python function `{sig}` that {desc}. For example, `{call}` should return `{out}`.",
    "Implement `{sig}` in Python: it {desc}. Example: `{call}` returns `{out}`.",
]


def run_code_check(code: str, fn: str, args: tuple, expected: object) -> None:
    """Execute a generated snippet and assert it gives the expected result."""
    namespace: dict = {}
    exec(compile(code, f"<{fn}>", "exec"), namespace)  # noqa: S102 - our own code
    got = namespace[fn](*args)
    assert got == expected, (fn, args, got, expected)


def make_code_rows() -> list[dict]:
    rows = []
    for task in CODE_TASKS:
        for idx, var in enumerate(task["variants"]):
            names = {"fn": var["fn"], "x": var["x"], "y": var.get("y", "")}
            params = ", ".join(p for p in (var["x"], var.get("y")) if p)
            code = task["code"].format(**names)
            run_code_check(code, var["fn"], var["args"], var["out"])
            call = f"{var['fn']}({', '.join(repr(a) for a in var['args'])})"
            prompt = CODE_PROMPTS[idx % len(CODE_PROMPTS)].format(
                sig=f"{var['fn']}({params})",
                desc=task["desc"].format(**{k: f"`{v}`" for k, v in names.items()}),
                call=call,
                out=repr(var["out"]),
            )
            explain = task["explain"].replace("{x}", f"`{var['x']}`")
            response = f"{explain}\n\n```python\n{code}```"
            rows.append({"prompt": prompt, "response": response, "task": "code"})
    return rows


# ---------------------------------------------------------------------------
# Prior-capability set (hand written, fixed order).
# ---------------------------------------------------------------------------

PRIOR_PAIRS = [
    # Simple facts
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the capital of Brazil?", "The capital of Brazil is Brasília."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the chemical formula for water?",
     "The chemical formula for water is H2O: two hydrogen atoms bonded to one oxygen atom."),
    ("What gas do plants absorb from the air for photosynthesis?",
     "Plants absorb carbon dioxide from the air and use sunlight to turn it into sugar, releasing oxygen."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("At what temperature does water boil at sea level?",
     "At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit."),
    ("Why do we have seasons on Earth?",
     "Earth's axis is tilted, so each hemisphere gets more direct sunlight for part of the year and less for the rest. "
     "That change in sunlight causes the seasons."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the closest star to Earth?",
     "The closest star to Earth is the Sun. The next closest is Proxima Centauri, about 4.2 light-years away."),
    ("What organ pumps blood through the human body?", "The heart pumps blood through the human body."),
    ("How many days are in a week, and what are they?",
     "There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, and Sunday."),
    ("What day comes after Wednesday?", "Thursday comes after Wednesday."),
    ("How many months have 31 days?",
     "Seven months have 31 days: January, March, May, July, August, October, and December."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    # Rewriting
    ("Rewrite this sentence in the past tense: \"She walks to the market every morning.\"",
     "She walked to the market every morning."),
    ("Rewrite this sentence to sound more formal: \"Hey, can you send me that report real quick?\"",
     "Could you please send me the report at your earliest convenience?"),
    ("Fix the grammar in this sentence: \"Me and him goes to the park on Sundays.\"",
     "He and I go to the park on Sundays."),
    ("Rewrite this sentence in the active voice: \"The cake was eaten by the children.\"",
     "The children ate the cake."),
    ("Make this sentence shorter: \"Due to the fact that it was raining, we made the decision to stay inside.\"",
     "Because it was raining, we stayed inside."),
    ("Rewrite this sentence so it sounds friendlier: \"Your order will ship when it ships.\"",
     "Thanks for your patience! We'll ship your order as soon as it's ready."),
    ("Change this sentence to a question: \"The library closes at eight.\"",
     "Does the library close at eight?"),
    ("Rewrite this sentence without the double negative: \"I don't need no help.\"",
     "I don't need any help."),
    # Summarizing
    ("Summarize in one sentence: \"The city council met on Tuesday to discuss the new park. After a long debate, "
     "members voted to approve the plan, and construction will begin next spring.\"",
     "The city council approved the new park plan on Tuesday, with construction starting next spring."),
    ("Summarize in one sentence: \"Maria practiced the piano every day for a year. At first she struggled with "
     "simple songs, but by the end of the year she performed a full concert for her family.\"",
     "After a year of daily practice, Maria went from struggling with simple songs to performing a full concert."),
    ("Summarize in one sentence: \"The bakery ran out of bread by noon because a large school group stopped by. "
     "The owner plans to bake extra loaves on days when groups are expected.\"",
     "A school group bought out the bakery's bread by noon, so the owner will bake extra on busy days."),
    ("Give a one-sentence summary: \"Regular exercise strengthens the heart, improves mood, and helps people "
     "sleep better. Even a short daily walk can make a noticeable difference.\"",
     "Regular exercise, even a short daily walk, benefits the heart, mood, and sleep."),
    ("Summarize in one sentence: \"The hikers set out early, but fog rolled in by midday. They decided to turn "
     "back before reaching the summit and arrived safely at the trailhead that evening.\"",
     "Fog made the hikers turn back before the summit, and they returned safely that evening."),
    # Polite conversation
    ("Hi! How are you today?",
     "Hello! I'm doing well, thank you for asking. How can I help you today?"),
    ("Thank you so much for your help!",
     "You're very welcome! I'm glad I could help."),
    ("I'm feeling a little stressed about my exam tomorrow.",
     "That's completely understandable. Try to review the main points, get a good night's sleep, and remember "
     "that you've prepared for this. Good luck!"),
    ("Can you say good morning to my class?", "Good morning, everyone! I hope you all have a great day of learning."),
    ("Sorry, I think I asked the wrong question earlier.",
     "No problem at all! Feel free to ask whatever you meant to ask."),
    ("Write a short thank-you note to a neighbor who watered my plants.",
     "Dear neighbor, thank you so much for watering my plants while I was away. They look wonderful, and I "
     "really appreciate your kindness."),
    ("What should I say to congratulate a friend on a new job?",
     "You could say: \"Congratulations on your new job! They're lucky to have you, and I can't wait to hear "
     "how it goes.\""),
    # Definitions
    ("What does the word \"generous\" mean?",
     "Generous means willing to give more of something, like time, money, or help, than is expected."),
    ("Define \"photosynthesis\" in simple terms.",
     "Photosynthesis is the process plants use to make their own food from sunlight, water, and carbon dioxide."),
    ("What is a noun?", "A noun is a word that names a person, place, thing, or idea, such as \"teacher,\" \"city,\" or \"happiness.\""),
    ("What is an island?", "An island is a piece of land that is completely surrounded by water."),
    ("What does \"recycle\" mean?",
     "To recycle means to process used materials, like paper or plastic, so they can be made into new products."),
    ("What is a synonym?",
     "A synonym is a word that means the same or nearly the same as another word, like \"big\" and \"large.\""),
    ("What is gravity?",
     "Gravity is the force that pulls objects toward each other. On Earth, it pulls things toward the ground."),
    ("What is a mammal?",
     "A mammal is a warm-blooded animal with hair or fur that feeds its young with milk, such as a dog, whale, or human."),
    # Lists
    ("List the three primary colors.", "The three primary colors are red, blue, and yellow."),
    ("Name four seasons of the year.", "The four seasons are spring, summer, autumn, and winter."),
    ("List three fruits that are high in vitamin C.", "Oranges, strawberries, and kiwis are all high in vitamin C."),
    ("Name the planets of the solar system in order from the Sun.",
     "The planets in order are Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, and Neptune."),
    ("List three ways to save water at home.",
     "You can take shorter showers, turn off the tap while brushing your teeth, and fix leaking faucets."),
    ("Name the seven continents.",
     "The seven continents are Africa, Antarctica, Asia, Australia, Europe, North America, and South America."),
    ("List three things to pack for a day at the beach.", "Bring sunscreen, a towel, and a bottle of water."),
    ("Give three examples of renewable energy sources.", "Solar, wind, and hydroelectric power are renewable energy sources."),
    # Simple how-to / reasoning
    ("Which is heavier, a kilogram of feathers or a kilogram of bricks?",
     "They weigh the same: both are one kilogram."),
    ("Translate \"thank you\" into Spanish.", "\"Thank you\" in Spanish is \"gracias.\""),
    ("What is the opposite of \"ancient\"?", "The opposite of \"ancient\" is \"modern.\""),
    ("How do you make a cup of tea?",
     "Boil water, pour it over a tea bag in a cup, and let it steep for three to five minutes. "
     "Remove the bag and add milk or sugar if you like."),
]


def make_prior_rows() -> list[dict]:
    rows = [{"prompt": p, "response": r, "task": "prior"} for p, r in PRIOR_PAIRS]
    assert len(rows) == 60, len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows), "duplicate prior prompts"
    return rows


# ---------------------------------------------------------------------------
# Assembly and output.
# ---------------------------------------------------------------------------


def interleave(rows: list[dict], rng: random.Random) -> list[dict]:
    """Shuffle deterministically and make sure the first 10 rows mix both tasks."""
    rows = list(rows)
    rng.shuffle(rows)
    for kind in ("math", "code"):
        if not any(r["task"] == kind for r in rows[:10]):
            j = next(i for i, r in enumerate(rows) if r["task"] == kind)
            rows.insert(9, rows.pop(j))
    return rows


def validate(rows: list[dict]) -> None:
    for row in rows:
        assert set(row) == {"prompt", "response", "task"}, row
        assert len(row["prompt"]) < MAX_PROMPT_CHARS, row["prompt"]
        assert len(row["response"]) < MAX_RESPONSE_CHARS, row["response"]
    assert len({r["prompt"] for r in rows}) == len(rows), "duplicate prompts"


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Write rows as UTF-8 JSONL to a temp file in the same dir, then os.replace."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_sft() -> list[dict]:
    rng = random.Random(SEED)
    math_rows = make_math_rows(rng, N_MATH)
    code_rows = make_code_rows()
    assert len(code_rows) == N_CODE, len(code_rows)
    rows = interleave(math_rows + code_rows, rng)
    validate(rows)
    assert len(rows) == N_MATH + N_CODE
    assert {r["task"] for r in rows[:10]} == {"math", "code"}
    return rows


def main() -> None:
    sft = build_sft()
    prior = make_prior_rows()
    validate(prior)
    write_jsonl_atomic(SFT_PATH, sft)
    write_jsonl_atomic(PRIOR_PATH, prior)
    n_math = sum(r["task"] == "math" for r in sft)
    print(f"wrote {SFT_PATH.name}: {len(sft)} rows ({n_math} math, {len(sft) - n_math} code)")
    print(f"wrote {PRIOR_PATH.name}: {len(prior)} rows")


if __name__ == "__main__":
    main()
