"""The 13 languages of msb-core with script and resource tier.

Tiers follow MultiJail's convention, based on a language's share of Common Crawl: high-resource (HRL)
above about 1%, medium (MRL) between 0.1% and 1%, low (LRL) below 0.1%. MultiJail places en zh it vi
as HRL, ar ko th as MRL and bn sw jv as LRL. The three languages it does not cover are placed by the
same rule: Japanese holds several percent of Common Crawl (HRL); Indonesian sits just under the 1%
line and Hebrew around 0.2%, so both are MRL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    tier: str  # "hrl", "mrl" or "lrl"


LANGUAGES = {
    lang.code: lang
    for lang in [
        Language("en", "English", "Latin", "hrl"),
        Language("zh", "Chinese", "Han (simplified)", "hrl"),
        Language("it", "Italian", "Latin", "hrl"),
        Language("vi", "Vietnamese", "Latin", "hrl"),
        Language("ja", "Japanese", "Kanji + kana", "hrl"),
        Language("ar", "Arabic", "Arabic", "mrl"),
        Language("ko", "Korean", "Hangul", "mrl"),
        Language("th", "Thai", "Thai", "mrl"),
        Language("id", "Indonesian", "Latin", "mrl"),
        Language("he", "Hebrew", "Hebrew", "mrl"),
        Language("bn", "Bengali", "Bengali", "lrl"),
        Language("sw", "Swahili", "Latin", "lrl"),
        Language("jv", "Javanese", "Latin", "lrl"),
    ]
}
TIERS = ("hrl", "mrl", "lrl")
MSB_CORE_LANGUAGES = tuple(LANGUAGES)


def tier_of(code: str) -> str:
    """Tier of a language; languages outside the table (from a user's dataset) are 'other'."""
    return LANGUAGES[code].tier if code in LANGUAGES else "other"


def language_name(code: str) -> str:
    return LANGUAGES[code].name if code in LANGUAGES else code
