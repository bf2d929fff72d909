"""PTB tokenization of captions as the COCO caption evaluation does it, in pure Python.

pycocoevalcap's `PTBTokenizer` runs Stanford CoreNLP 3.4.1's PTBTokenizer (Java) with
`-preserveLines -lowerCase` over all captions joined by newlines, then drops the tokens in
`PUNCTUATIONS`. `ptb_tokenize(caption)` reproduces that for one caption: the Stanford lexer's
rules (words, contractions and possessives, n't, quotes, brackets, numbers, fractions,
phone-like digit groups, hyphenated words, abbreviations and acronyms, ellipses, dashes, URLs,
e-mail addresses, SGML tags, smileys, symbols) are re-implemented as a longest-match lexer with
the same priorities, then tokens are lower-cased and punctuation tokens removed. It agrees with
the Java tool on ordinary captions (tests/test_metrics_ptb.py compares the two on hundreds;
development compared 60,000 generated and randomly perturbed captions without a difference).

Deliberate differences, both because the Java pipeline lets one caption affect another:
- The line trap: the Python side only replaces "\n", but the Java lexer also ends lines at
  \r, \v, \f, U+0085, U+2028 and U+2029, so a caption containing one of them becomes two
  lines and every later caption of the corpus is paired with the wrong image. Here each
  caption is tokenized on its own and those characters are plain whitespace.
- Look-ahead across lines: a caption ending in a one-letter abbreviation ("... letter a.")
  loses the period in Java when the *next* caption starts with "The", "A", "It", ...
  Here a caption is tokenized as if followed by an empty line.

Like the Java tool: parentheses/brackets become "-lrb-", "-rrb-", "-lsb-", ... (lower-cased,
so they are *not* removed: PUNCTUATIONS lists the upper-case forms); a space inside a
fraction ("5 7/8") or a phone-like digit group becomes U+00A0 inside one token.
`ptb_tokenize` returns the tokens joined by single spaces, exactly the string pycocoevalcap
hands to its scorers (which split it again on whitespace, U+00A0 included, except ROUGE-L).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

# Tokens pycocoevalcap removes after PTB tokenization (its PUNCTUATIONS list).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# --- character classes (JFlex is caseless for literals only; classes keep their case) ---
_SPACE = "[ \\t\u00a0\u2000-\u200a\u3000]"
_NEWLINE = "[\\r\\n\u2028\u2029\u000b\u000c\u0085]"
_SPACENL = "[ \\t\u00a0\u2000-\u200a\u3000\\r\\n\u2028\u2029\u000b\u000c\u0085]"
# Python's \\w also covers numeric characters such as "½" or "²"; Java's isLetter does not.
_NOT_LETTERS = "\\W\\d_\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u2079\u2080-\u2089\u2150-\u218f\u2460-\u24ff\u2776-\u2793"
_LETTER_CLASS = f"[^{_NOT_LETTERS}]"
_LETTER = f"(?:{_LETTER_CLASS}|[\u00ad\u0300-\u036f]|&[aeiouAEIOU](?i:acute|grave|uml);)"
_ALNUM = f"(?:{_LETTER_CLASS}|\\d)"
_DIGIT = "\\d"
_APOS = "(?:['\u0092\u2019]|&apos;)"
_APOSETC = "(?:['\u0092\u2019`\u0091\u2018\u201b]|&apos;)"
_HYPHEN = "[-_\u058a\u2010\u2011]"
_SGML_NAME = "[A-Za-z][A-Za-z0-9_:.-]*"
_SGML = (  # a tag: <name attr attr="quoted" ... />, </name>, <!...>, <?...>
    f"<(?:[!?][A-Za-z-][^>\\r\\n]*|{_SGML_NAME}(?:[ ]+(?:{_SGML_NAME}[ ]*=[ ]*(?:'[^'\\r\\n]*'|\"[^\"\\r\\n]*\")|{_SGML_NAME}))*"
    f"[ ]*/?|/{_SGML_NAME})[ ]*>"
)
_SENTEND = f"{_SPACENL}(?:{_SPACENL}|[A-Z]|{_SGML})"
_WORD = f"{_LETTER}(?:{_LETTER}|{_DIGIT})*(?:[.!?]{_LETTER}(?:{_LETTER}|{_DIGIT})*)*"
_REDAUX = f"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
_SREDAUX = f"(?i:n){_APOSETC}(?i:t)"
# Alternatives are separate sub-rules wherever one could match a prefix of another: Python's
# regex alternation is first-match, JFlex's is longest-match.
_APOWORD = [
    f"{_APOS}(?i:n){_APOS}?", f"[lLdDjJ]{_APOS}", f"(?i:dunkin|somethin|ol){_APOS}", f"{_APOS}(?i:em|cause|till?)",
    f"[A-HJ-XZn]{_APOSETC}{_LETTER}{{2}}{_LETTER}*", f"{_APOS}[2-9]0(?i:s)",
    f"{_LETTER}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_LETTER}*", "(?i:cont'd\\.?)",
    "(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
]
_NUM = f"{_DIGIT}+(?:[.:,\u00ad\u066b\u066c]{_DIGIT}+)*|{_DIGIT}*(?:[.:,\u00ad\u066b\u066c]{_DIGIT}+)+"
_THING_PART = f"(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+"
_THING = f"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*"
_FILENAME_EXT = (
    "bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py"
    "|sql|tar|txt|wav|x|xml|zip|3gp|wm[va]|avi|flv|mp[34g]"
)
_FILENAME = f"{_ALNUM}+(?:[._/]{_ALNUM}+)*\\.(?i:{_FILENAME_EXT})"
_THINGA = "[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+"
_ACRO = "(?i:u\\.s\\.-(?:u\\.k|u\\.s\\.s\\.r))|(?i:canada|sino|korean|eu|japan|non)-(?i:u\\.s)|[A-Za-z](?:\\.[A-Za-z])+"
_HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:(?:{_ACRO})\\.|[A-Za-z0-9\u00ad]+))+"
_ABMONTH = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
_ABDAYS = "mon|tue|tues|wed|thu|thurs|fri"
_ABSTATE = (
    "(?i:ala|ariz)|A(?i:z|rk)|(?i:calif|colo|conn|ct|dak)|D(?i:el)|(?i:fla|ga)|I(?i:ll)|(?i:ind|kans?|ky)|L(?i:a)|M(?i:ass)"
    "|(?i:md|mich|minn)|M(?i:iss)|(?i:mo|mont|neb|nev|okla)|O(?i:re)|P(?i:a)|(?i:penn|tenn)|T(?i:ex)|(?i:va|vt)|W(?i:ash)"
    "|(?i:wisc?|wyo)"
)
_ABCOMP = "inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|dept|bhd|assn|univ|intl|sys"
_ABBREV1 = (
    f"(?:(?i:{_ABMONTH}|{_ABDAYS})|{_ABSTATE}|(?i:{_ABCOMP}|tel|est|ext|sq|jr|sr|bros|(?:ed|ph)\\.d|blvd|rd|esq|etc|al|seq|bldg))\\."
)
_ABTITLE = (
    "(?i:mr|mrs|ms)|M(?i:iss)|(?i:drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|capt"
    "|ste?|ave|pres|lieut|rt|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc)"
)
_ABBREV4 = (
    f"{_ACRO}|(?i:a\\.k\\.a)|{_ABTITLE}|(?i:vs|alex|wm|jos|cie|cf|treas|ph)|(?i:invt|elec|natl|m[ft]g|dept|blvd|rd|ave)"
    "|[A-Za-z]"
)
_ABBREV3 = "(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\\."
# Words that, after an acronym and spaces, mean the acronym ended a sentence (first letter case-sensitive).
_ACRONYM_FOLLOWERS = "|".join(
    f"{word[0]}(?i:{word[1:]})" if len(word) > 1 else word
    for word in (
        "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More Mr\\. Ms\\."
        " Now Once One Other Our She Since So Some Such That The Their Then There These They This We When While What Yet You"
    ).split()
) + f"|{_SGML}"
_PHONE = (
    "(?:\\([0-9]{2,3}\\)[ \u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0])[0-9]{3,4}[- \u00a0]?[0-9]{3,5}"
    "|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}"
)
_MISCSYMBOL = (
    "[+%&~^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be\u05c0\u05c3"
    "\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6-\u07f8\u0964"
    "\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e"
    "\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]"
)
_EMAIL = (
    "(?:&lt;|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r\"<>|()\u00a0{}]*@(?:[^ \\t\\n\\f\\r\"<>|(){}.\u00a0]+\\.)*"
    "[^ \\t\\n\\f\\r\"<>|(){}.\u00a0]+(?:&gt;|>)?"
)
_TBSPEC = f"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\\.d\\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls|cap{_APOS}n|c{_APOS}est)"
_SUPERSCRIPTS = "[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]"
_SUBSCRIPTS = "[\u2080-\u2089]"
_FIRST_SUBSUP = "[\u207a\u207b\u208a\u208b\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u2080-\u2089]"
_CURRENCY_SIGNS = "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
_IN_SENTENCE_PUNCT = "[,;:\u3001]"
_PERIODS = "[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"
_ACRONYM_CONTEXT = f"{_SPACENL}+(?:{_ACRONYM_FOLLOWERS}){_SPACENL}"
_QUOTE_CHARS = "[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]"


@dataclass(frozen=True)
class _Rule:
    """One lexer rule: token regex, optional trailing context, and what the token becomes."""

    name: str  # for debugging and tests
    pattern: re.Pattern  # group "tok" is the token; group "ctx" (if any) the trailing context
    action: Callable[[str], tuple[list[str], int]]  # token text -> (output tokens, chars consumed)
    first: re.Pattern  # matches every character a match can start with (to skip rules quickly)


def _rule(name: str, token: str | list[str], action, context: str | None, first: str) -> list[_Rule]:
    """Rules for `token` (a regex, or alternatives that must each get the longest match).

    `context` is the JFlex trailing context (counted for the longest match, not consumed);
    `first` a character class holding every character a match can start with.
    """
    alternatives = token if isinstance(token, list) else [token]
    suffix = f"(?=(?P<ctx>{context}))" if context else ""
    first_char = re.compile(first)
    return [_Rule(name, re.compile(f"(?P<tok>{alt}){suffix}"), action, first_char) for alt in alternatives]


def _keep(text: str) -> tuple[list[str], int]:
    return [text], len(text)


def _drop(text: str) -> tuple[list[str], int]:
    return [], len(text)


def _constant(value: str) -> Callable[[str], tuple[list[str], int]]:
    return lambda text: ([value], len(text))


def _push_back(count: int) -> Callable[[str], tuple[list[str], int]]:
    """Return the token without its last `count` chars, which are lexed again (JFlex yypushback)."""
    return lambda text: ([text[:-count]], len(text) - count)


def _nbsp(text: str) -> tuple[list[str], int]:
    return [text.replace(" ", "\u00a0")], len(text)


def _phone(text: str) -> tuple[list[str], int]:
    return [text.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-")], len(text)


def _smiley(text: str) -> tuple[list[str], int]:
    return [text.replace("(", "-LRB-").replace(")", "-RRB-")], len(text)


def _amp(text: str) -> tuple[list[str], int]:
    return [re.sub("(?i)&amp;", "&", text)], len(text)


def _soft_hyphens(text: str) -> tuple[list[str], int]:
    return [text.replace("\u00ad", "") or "-"], len(text)


def _hyphens(text: str) -> tuple[list[str], int]:
    return ["--" if 3 <= len(text) <= 4 else text], len(text)


_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}


def _translate(table: dict[str, str]) -> Callable[[str], tuple[list[str], int]]:
    return lambda text: (["".join(table.get(ch, ch) for ch in text)], len(text))


def _latex_quotes(text: str, probably_left: bool) -> str:
    """Stanford's latexQuotes: map ASCII, CP1252 and Unicode quotes to ` `` ' ''."""
    if probably_left:
        text = re.sub("&apos;|'", "`", text)
        text = re.sub('"|&quot;', "``", text)
    else:
        text = re.sub("&apos;|'", "'", text)
        text = re.sub('"|&quot;', "''", text)
    text = re.sub("[\u0091\u2018\u201b\u2039]", "`", text)
    text = re.sub("[\u0092\u2019\u203a]", "'", text)
    text = re.sub("[\u0093\u201c\u00ab]", "``", text)
    return re.sub("[\u0094\u201d\u00bb]", "''", text)


def _left_quote(text: str) -> tuple[list[str], int]:
    return [_latex_quotes(text, True)], len(text)


def _right_quote(text: str) -> tuple[list[str], int]:
    return [_latex_quotes(text, False)], len(text)


def _acronym_then_period(text: str) -> tuple[list[str], int]:
    """Sentence-final acronym: "U.S." stays whole and its period is lexed again; "A." becomes "A" + "."."""
    return ([text[:-1]], 1) if len(text) == 2 else ([text], len(text) - 1)


def _abbrev_then_period(text: str) -> tuple[list[str], int]:
    """Sentence-final abbreviation: keep it with its period, and lex the period again (reduplication)."""
    return [text], len(text) - 1


_FIRST_LETTER = f"(?:{_LETTER_CLASS}|[\u00ad\u0300-\u036f&])"
_FIRST_ALNUM = f"(?:{_LETTER_CLASS}|\\d)"
_FIRST_APOS = "['\u0092\u2019&]"
_FIRST_QUOTE = "['\u0092\u2019&`\u2018\u201a\u201b\u201c\u201d\u0091\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]"
_FIRST_SPACE = "[ \\t\u00a0\u2000-\u200a\u3000\\r\\n\u2028\u2029\u000b\u000c\u0085\u200b\u200e\u200f\ufeff\\x00&]"

# Rules in the Stanford lexer's priority order; the longest match (token + trailing context) wins,
# ties go to the earlier rule, exactly as in a JFlex scanner. The last argument of each rule is
# the class of characters its matches can start with (tests check these classes).
_RULES: list[_Rule] = [rule for rules in [
    _rule("assimilation3", f"(?i:cannot)|{_APOS}(?i:twas)", _push_back(3), None, "[cC'\u0092\u2019&]"),
    _rule("assimilation2", f"{_APOS}(?i:tis)|(?i:gonna|gotta|lemme|gimme|wanna)", _push_back(2), None, "['\u0092\u2019&gGlLwW]"),
    _rule("sgml", _SGML, _nbsp, None, "<"),
    _rule("mdash", "&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", _constant("--"), None, "[&\u0096\u0097\u2013\u2014\u2015]"),
    _rule("amp", "(?i:&amp;)", _amp, None, "&"),
    _rule("sppunc", "&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);", _keep, None, "&"),
    _rule("word_before_redaux", _WORD, _soft_hyphens, _REDAUX, _FIRST_LETTER),
    _rule("sword_before_nt", _SWORD, _soft_hyphens, _SREDAUX, "[A-Za-z\u00ad]"),
    _rule("word", _WORD, _soft_hyphens, None, _FIRST_LETTER),
    _rule("apoword", _APOWORD, _keep, None, f"(?:{_FIRST_LETTER}|{_FIRST_APOS})"),
    _rule("apoword2", f"(?i:y){_APOS}", _keep, _LETTER, "[yY]"),
    _rule("full_url", "(?i:https?)://[^ \\t\\n\\f\\r\"<>|()]+[^ \\t\\n\\f\\r\"<>|.!?(){},-]", _keep, None, "[hH]"),
    _rule(
        "likely_url",
        "(?:(?i:www)\\.(?:[^ \\t\\n\\f\\r\"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4}|(?:[^ \\t\\n\\f\\r\"`'<>|.!?(){},\\-_$]+\\.)+(?i:com|net|org|edu))"
        "(?:/[^ \\t\\n\\f\\r\"<>|()]+[^ \\t\\n\\f\\r\"<>|.!?(){},-])?",
        _keep,
        None,
        "[^ \\t\\n\\f\\r\"<>|.!?(){},`'\\-_$]",
    ),
    _rule("email", _EMAIL, _keep, None, "[a-zA-Z0-9<&]"),
    _rule("twitter", f"@[a-zA-Z_][a-zA-Z_0-9]*|#{_LETTER}+", _keep, None, "[@#]"),
    _rule("redaux", _REDAUX, _right_quote, "[^A-Za-z]", _FIRST_APOS),
    _rule("sredaux", _SREDAUX, _right_quote, None, "[nN]"),
    _rule("date", f"{_DIGIT}{{1,2}}[-/]{_DIGIT}{{1,2}}[-/]{_DIGIT}{{2,4}}", _keep, None, "\\d"),
    _rule("number", f"[-+]?(?:{_NUM})", _soft_hyphens, None, "[-+\\d.,:\u00ad\u066b\u066c]"),
    _rule("subsupnum", f"[\u207a\u207b\u208a\u208b]?(?:{_SUPERSCRIPTS}+|{_SUBSCRIPTS}+)", _keep, None, _FIRST_SUBSUP),
    _rule("frac", f"(?:{_DIGIT}{{1,4}}[- \u00a0])?{_DIGIT}{{1,4}}(?:\\\\?/|\u2044){_DIGIT}{{1,4}}", _nbsp, None, "\\d"),
    _rule("frac2", "[\u00bc\u00bd\u00be\u2153-\u215e]", _translate(_FRACTIONS), None, "[\u00bc\u00bd\u00be\u2153-\u215e]"),
    _rule("tbspec", _TBSPEC, _amp, None, "[-cCpPaAsS]"),
    _rule("thing3", "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", _keep, None, "[A-Za-z0-9]"),
    _rule("prog_lang", "(?i:c\\+\\+|[cf]#)", _keep, None, "[cCfF]"),
    _rule("dolsign", "[A-Z]*\\$|#", _keep, None, "[A-Z$#]"),
    _rule("dolsign2", _CURRENCY_SIGNS, _translate(_CURRENCY), None, _CURRENCY_SIGNS),
    _rule("acronym_sentence_end", f"(?:{_ACRO}|[A-Za-z])\\.", _acronym_then_period, _ACRONYM_CONTEXT, "[A-Za-z]"),
    _rule("abbrev3", _ABBREV3, _keep, f"{_SPACENL}?{_DIGIT}", "[A-Za-z]"),
    _rule("abbrev1_sentence_end", _ABBREV1, _abbrev_then_period, _SENTEND, "[A-Za-z]"),
    _rule("abbrev1_mid_text", _ABBREV1, _keep, "[\\s\\S]{2}", "[A-Za-z]"),
    _rule("abbrev1_at_end", _ABBREV1, _abbrev_then_period, None, "[A-Za-z]"),
    _rule("abbrev2", f"(?:{_ABBREV4})\\.", _keep, None, "[A-Za-z]"),
    _rule("abbrev4", _ABBREV4, _keep, _SPACE, "[A-Za-z]"),
    _rule("acro", _ACRO, _keep, _SPACENL, "[A-Za-z]"),
    _rule("tbspec2", f"{_APOS}[0-9][0-9]", _keep, _SPACENL, _FIRST_APOS),
    _rule("filename", _FILENAME, _keep, f"{_SPACENL}|[.?!,\"'<]", _FIRST_ALNUM),
    _rule("word_period", f"(?:{_WORD})\\.", _soft_hyphens, _IN_SENTENCE_PUNCT, _FIRST_LETTER),
    _rule("phone", _PHONE, _phone, None, "[\\d(+]"),
    _rule("double_quote_left", '"|&quot;', _left_quote, "[A-Za-z0-9$]", '["&]'),
    _rule("double_quote", '"|&quot;', _right_quote, None, '["&]'),
    _rule("delete", "\u007f", _drop, None, "\u007f"),
    _rule("less_than", "<|&lt;", _constant("<"), None, "[<&]"),
    _rule("greater_than", ">|&gt;", _constant(">"), None, "[>&]"),
    _rule("smiley", "[<>]?[:;=][-o*']?[()DPdpO\\\\{@|\\[\\]]", _smiley, "[^A-Za-z0-9]|$", "[<>:;=]"),
    _rule("asian_smiley", "[-^x=~<>']_[-^x=~<>']", _keep, None, "[-^x=~<>']"),
    _rule("open_brace", "\\{", _constant("-LCB-"), None, "\\{"),
    _rule("close_brace", "\\}", _constant("-RCB-"), None, "\\}"),
    _rule("open_square", "\\[", _constant("-LSB-"), None, "\\["),
    _rule("close_square", "\\]", _constant("-RSB-"), None, "\\]"),
    _rule("open_paren", "\\(", _constant("-LRB-"), None, "\\("),
    _rule("close_paren", "\\)", _constant("-RRB-"), None, "\\)"),
    _rule("hyphens", "-+", _hyphens, None, "-"),
    _rule("ellipsis", "\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", _constant("..."), None, "[.\u0085\u2026]"),
    _rule("footnote_marks", "@+|#+|_+", _keep, None, "[@#_]"),
    _rule("asterisks", "\\*+|(?:\\\\\\*){1,3}", _keep, None, "[*\\\\]"),
    _rule("in_sentence_punct", _IN_SENTENCE_PUNCT, _keep, None, _IN_SENTENCE_PUNCT),
    _rule("bangs", "[?!]+", _keep, None, "[?!]"),
    _rule("period", _PERIODS, _keep, None, _PERIODS),
    _rule("equals", "=+", _keep, None, "="),
    _rule("slash", "/", _keep, None, "/"),
    _rule("hthing_period", f"(?:{_HTHING})\\.", _soft_hyphens, _IN_SENTENCE_PUNCT, "[A-Za-z0-9]"),
    _rule("hthing", _HTHING, _soft_hyphens, None, "[A-Za-z0-9]"),
    _rule("thing_period", f"(?:{_THING})\\.", _keep, _IN_SENTENCE_PUNCT, _FIRST_ALNUM),
    _rule("thing", _THING, _keep, None, _FIRST_ALNUM),
    _rule("thinga_period", f"(?:{_THINGA})\\.", _amp, _IN_SENTENCE_PUNCT, "[A-Z]"),
    _rule("thinga", _THINGA, _amp, None, "[A-Z]"),
    _rule("quote_before_word", "'", _left_quote, "[A-Za-z][^ \\t\\n\\r\u00a0]", "'"),
    _rule("redaux_any", _REDAUX, _right_quote, None, _FIRST_APOS),
    _rule("quotes", f"''|{_QUOTE_CHARS}{{1,2}}|{_APOS}", _right_quote, None, _FIRST_QUOTE),
    _rule("duck_feet", "<<|>>", _keep, None, "[<>]"),
    _rule("misc_symbol", _MISCSYMBOL, _keep, None, _MISCSYMBOL),
    _rule("space", f"(?:{_SPACE}|{_NEWLINE}|[\u200b\u200e\u200f\ufeff\\x00])+|(?i:&nbsp;)", _drop, None, _FIRST_SPACE),
] for rule in rules]
_UNTOKENIZABLE = _Rule("untokenizable", re.compile("(?P<tok>.)", re.S), _drop, re.compile("[\\s\\S]"))

# Fast paths, both checked against the full lexer by the tests. A run of letters followed by
# whitespace, or by closing punctuation and whitespace, is what the full lexer returns (no rule
# can match longer there) unless it is a split word ("cannot" -> "can" "not"). Before a final
# period the word is returned alone unless "word." is an abbreviation the lexer keeps whole.
_WHITESPACE_AHEAD = "(?:[ \\t\\r\\n\u000b\u000c\u0085\u2028\u2029]|$)"
_FAST_WORD = re.compile(f"{_LETTER_CLASS}+(?={_WHITESPACE_AHEAD}|[,;:)\\]}}!?\"\u201d\u00bb]+{_WHITESPACE_AHEAD}|(?P<period>\\.){_WHITESPACE_AHEAD})")
_ABBREVIATION = re.compile(f"{_ABBREV1}|(?:{_ABBREV4})\\.|{_ABBREV3}")
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
# Whitespace the Java pipeline would treat as line ends; here they are spaces (see module docstring).
_LINE_BREAKS = re.compile("\r\n|[\r\n\u000b\u000c\u0085\u2028\u2029]")


_RULES_BY_FIRST_CHAR: dict[str, list[_Rule]] = {}


def _rules_starting_with(char: str) -> list[_Rule]:
    """The rules whose matches can start with `char` (cached per character)."""
    rules = _RULES_BY_FIRST_CHAR.get(char)
    if rules is None:
        rules = _RULES_BY_FIRST_CHAR[char] = [rule for rule in _RULES if rule.first.match(char)]
    return rules


def _longest_match(text: str, position: int) -> tuple[_Rule, str]:
    """The winning rule at `position`: longest token+context, earliest rule on ties."""
    best_rule, best_token, best_length = _UNTOKENIZABLE, text[position], 0
    for rule in _rules_starting_with(text[position]):
        match = rule.pattern.match(text, position)
        if match is None:
            continue
        context_end = match.end("ctx") if "ctx" in rule.pattern.groupindex else -1
        length = max(match.end(), context_end) - position
        if length > best_length:
            best_rule, best_token, best_length = rule, match.group("tok"), length
    return best_rule, best_token


def ptb_tokens(caption: str, fast_path: bool = True) -> list[str]:
    """Stanford PTB tokens of one caption (original case, punctuation kept), Java-compatible.

    `fast_path=False` runs every token through the full lexer (same result, slower; for tests).
    """
    text = _LINE_BREAKS.sub(" ", caption) + "\n"  # as a line of the Java input file: followed by a newline
    tokens: list[str] = []
    position, end = 0, len(text)
    while position < end:
        fast = _FAST_WORD.match(text, position) if fast_path else None
        if fast is not None and fast.group().lower() not in _SPLIT_WORDS:
            if fast.group("period") is None or not _ABBREVIATION.fullmatch(fast.group() + "."):
                tokens.append(fast.group())
                position = fast.end()
                continue
        rule, token = _longest_match(text, position)
        produced, consumed = rule.action(token)
        tokens.extend(produced)
        position += max(consumed, 1)
    return tokens


@lru_cache(maxsize=1 << 17)  # reference sets are scored again and again (one model after another)
def ptb_tokenize(caption: str) -> str:
    """One caption as pycocoevalcap's PTBTokenizer outputs it: lower-cased, punctuation removed, space-joined."""
    return " ".join(token for token in (t.lower() for t in ptb_tokens(caption)) if token not in PUNCTUATIONS)
