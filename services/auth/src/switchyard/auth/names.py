"""How emails and team names are compared, and which look-alike ones are refused.

The confusables' data (about 17 MiB once loaded) is read only when a check needs it: a
name with a letter outside ASCII, or a team name compared with the others.

Two spellings people read as the same name are one name here:
- Unicode compatibility forms are folded (NFKC): full-width `ａｌｉｃｅ` is `alice`, and a
  ligature `ﬁ` is `fi`, as PRECIS's width mapping does for usernames (RFC 8265, 3.3);
- composed and decomposed accents are one (NFKC composes, as NFC did before);
- case is ignored (emails lower-cased, team names case-folded).

Letters of different scripts that look alike (Latin `s` and Cyrillic `ѕ`, Latin `A` and
Greek `Α`) cannot be folded into each other without merging real names of those
scripts, so a new name is refused instead when one of its words mixes scripts and a
letter of one of them is a look-alike of another's, by the confusables of Unicode's
security mechanisms (UTS #39), as the `confusable-homoglyphs` package ships them. A word
in one script (`Исследования`), scripts one language writes together (`データ分析`), and
scripts that share no look-alikes are accepted. A team name is also compared with the
tenant's others by its skeleton (`looks_of`), which catches a name wholly in another
script's look-alikes; an email is not (that would need every account's).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

# Characters of no particular script (digits, punctuation) and combining marks: they
# neither make a word mixed nor look like another script's letters here.
_SCRIPTLESS = {"COMMON", "INHERITED"}
_WORD_BREAK = re.compile(r"[\W_]+")
_AUGMENTED = {
    # Latin is written beside each of them (`CTO室`, `OCR開発`): UTS #39's "highly
    # restrictive" level allows those combinations.
    "LATIN": frozenset({"LATIN", "JAPANESE", "KOREAN", "CHINESE"}),
    "HAN": frozenset({"HAN", "JAPANESE", "KOREAN", "CHINESE"}),
    "HIRAGANA": frozenset({"HIRAGANA", "JAPANESE"}),
    "KATAKANA": frozenset({"KATAKANA", "JAPANESE"}),
    "HANGUL": frozenset({"HANGUL", "KOREAN"}),
    "BOPOMOFO": frozenset({"BOPOMOFO", "CHINESE"}),
}


def fold_email(email: str) -> str:
    """`email` trimmed, with compatibility forms folded (NFKC), lower-cased and without a
    trailing dot (`acme.com.` is the DNS root's way of writing `acme.com`): the form an
    account's email is stored, looked up and throttled in. Validates nothing."""
    folded = unicodedata.normalize("NFKC", email.strip()).lower()
    # Lower-casing can leave a decomposed letter (`İ` becomes `i` and a dot above).
    return unicodedata.normalize("NFKC", folded).removesuffix(".")


def fold_name(name: str) -> str:
    """`name` with compatibility forms folded (NFKC) and case-folded (`str.casefold`, so
    `Straße` is `strasse`): two team names are one when these are equal."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each character of Unicode's confusables that has look-alikes, and the one text its
    class is written as (UTS #39's prototypes: the data pairs each source character with
    its prototype, e.g. Cyrillic `а` with `a`, `1` and `I` with `l`, `m` with `rn`). Single
    characters are joined into classes, each represented by its smallest member; a
    character whose only look-alike is several characters (`m`) maps to them."""
    parent: dict[str, str] = {}

    def root(character: str) -> str:
        while parent.get(character, character) != character:
            character = parent[character]
        return character

    from confusable_homoglyphs import confusables

    expansions: dict[str, str] = {}
    for character, glyphs in confusables.confusables_data.items():
        if len(character) != 1:
            continue
        singles = [glyph["c"] for glyph in glyphs if len(glyph["c"]) == 1]
        if not singles and len(glyphs) == 1:
            expansions[character] = glyphs[0]["c"]
        for other in singles:
            first, second = root(character), root(other)
            if first != second:
                parent[max(first, second)] = min(first, second)
    mapping = {character: root(character) for character in parent}
    for character, text in expansions.items():
        mapping.setdefault(character, text)
    return mapping


def skeleton(text: str) -> str:
    """`text` as it looks (UTS #39's skeleton, by the `confusable-homoglyphs` data): each
    character replaced by its look-alikes' prototype, so `Rеsearch` (a Cyrillic `е`),
    `ΑΙ` (Greek) and `AI`, `0ps` and `Ops`, or `ɑlice` and `alice`, have one skeleton.
    Case matters, as letters look: `I` is like `l`, `i` is not."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize(
        "NFD", "".join(prototypes.get(character, character) for character in decomposed)
    )


# Printable characters drawn as nothing but a space (the Braille blank, Hangul fillers),
# which Python's `str.split` does not take for white space: read as a space.
_BLANKS = str.maketrans(dict.fromkeys("\u2800\u3164\u115f\u1160\uffa0", " "))


def looks_of(name: str) -> frozenset[str]:
    """What `name` looks like, in any case: two names look alike when they share one of
    these. The skeletons of `name`'s compatibility form (NFKC) with its runs of white
    space (and characters drawn blank, `_BLANKS`) made one space, as written and with its
    ASCII letters in capitals, each then case-folded. Skeletons are made of letters as
    written, so each finds its own look-alikes: as written, `AI Team` meets `Al Team`; in
    capitals, `0ps` meets `ops` (`O` and `0`, which small letters tell apart) and `C00l
    Team` meets `Cool Team`, at the price of `io` meeting `10` too. Only ASCII letters
    are put in capitals, so a word of another script does not meet Latin capitals (`нет`
    and `HET`), and not in small letters: names whose capitals differ (`Команда Б` and
    `Команда 6`, whose small `б` looks like `6`) are two names."""
    text = " ".join(unicodedata.normalize("NFKC", name).translate(_BLANKS).split())
    capitals = "".join(c.upper() if c.isascii() else c for c in text)
    return frozenset(skeleton(form).casefold() for form in (text, capitals))


def _writing_systems(script: str) -> frozenset[str]:
    # UTS #39's augmented script sets: Japanese writes Han, Hiragana and Katakana in one
    # word (`データ分析`), Korean Han and Hangul, Chinese Han and Bopomofo; each of them
    # with Latin too.
    return _AUGMENTED.get(script, frozenset({script}))


def look_alike(text: str) -> tuple[str, str, str] | None:
    """The first look-alike in `text`, or None: `(word, character, script)` where `word`
    (a run of letters and digits) mixes scripts no one writing system uses together and
    `character` of it looks like a letter of `script`, another script of the same word.
    Words are split at anything but letters and digits, so `Team-Ω` is two words and
    accepted; `データ分析` (Katakana and Han) is one writing system's, accepted."""
    if text.isascii():
        return None  # Latin letters, digits and punctuation: one script
    from confusable_homoglyphs import categories, confusables

    for word in _WORD_BREAK.split(text):
        letters = "".join(c for c in word if categories.alias(c) not in _SCRIPTLESS)
        scripts = Counter(categories.alias(character) for character in letters)
        systems = [_writing_systems(script) for script in scripts]
        if len(scripts) < 2 or frozenset.intersection(*systems):
            continue
        # The word's main script first, so the letter named is the odd one out (the
        # Cyrillic `е` of `Rеsearch`, not its Latin letters).
        for script, _ in scripts.most_common():
            # Letters of `script` are skipped; any other that is confusable with a
            # character of `script` is a look-alike, unless both scripts are one writing
            # system's (Katakana `タ` and Han `夕` are both Japanese).
            found = confusables.is_confusable(letters, greedy=True, preferred_aliases=[script])
            for finding in found or ():
                if not _writing_systems(finding["alias"]) & _writing_systems(script):
                    return word, finding["character"], script.title()
    return None


def look_alike_message(what: str, text: str) -> str | None:
    """A sentence refusing `text` (a `what`: "team name", "email address") for its first
    look-alike, or None when it has none."""
    found = look_alike(text)
    if found is None:
        return None
    word, character, script = found
    return (
        f"The {what} must not mix scripts with look-alike letters: in {word!r}, "
        f"{character!r} (U+{ord(character):04X}) looks like a {script} letter."
    )
