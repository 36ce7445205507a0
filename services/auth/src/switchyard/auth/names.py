"""How emails and team names are compared, and which look-alike ones are refused.

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
in one script (`Исследования`), and scripts that share no look-alikes (`開発Team`), are
accepted. A name wholly in another script's look-alikes (every letter Cyrillic) stays
distinct from its Latin twin.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from confusable_homoglyphs import categories, confusables

# Characters of no particular script (digits, punctuation) and combining marks: they
# neither make a word mixed nor look like another script's letters here.
_SCRIPTLESS = {"COMMON", "INHERITED"}
_WORD_BREAK = re.compile(r"[\W_]+")


def fold_email(email: str) -> str:
    """`email` trimmed, with compatibility forms folded (NFKC) and lower-cased: the form an
    account's email is stored, looked up and throttled in. Validates nothing."""
    folded = unicodedata.normalize("NFKC", email.strip()).lower()
    # Lower-casing can leave a decomposed letter (`İ` becomes `i` and a dot above).
    return unicodedata.normalize("NFKC", folded)


def fold_name(name: str) -> str:
    """`name` with compatibility forms folded (NFKC) and case-folded (`str.casefold`, so
    `Straße` is `strasse`): two team names are one when these are equal."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def look_alike(text: str) -> tuple[str, str, str] | None:
    """The first look-alike in `text`, or None: `(word, character, script)` where `word`
    (a run of letters and digits) mixes scripts and `character` of it looks like a letter
    of `script`, another script of the same word. Words are split at anything but letters
    and digits, so `Team-Ω` is two words and accepted."""
    for word in _WORD_BREAK.split(text):
        letters = "".join(c for c in word if categories.alias(c) not in _SCRIPTLESS)
        scripts = Counter(categories.alias(character) for character in letters)
        if len(scripts) < 2:
            continue
        # The word's main script first, so the letter named is the odd one out (the
        # Cyrillic `е` of `Rеsearch`, not its Latin letters).
        for script, _ in scripts.most_common():
            # Letters of `script` are skipped; any other that is confusable with a
            # character of `script` is the look-alike.
            found = confusables.is_confusable(letters, preferred_aliases=[script])
            if found:
                return word, found[0]["character"], script.title()
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
