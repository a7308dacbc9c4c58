"""Word lists of the synthetic homepage generator (all invented here; no third-party text).

The synthetic tokenizer's vocabulary is built from these lists (`lexicon_words`), so changing a
list changes token ids: saved synthetic tokenizers keep their own vocabulary for that reason.
"""
from __future__ import annotations

from sener_jax.data.documents import split_words

FIRST_NAMES = (
    "Arlen Bexa Corvin Dalia Emrik Fenna Galen Hesta Ivor Jorna Kaelen Lirra Marek Nessa Orin "
    "Pella Quillan Rhea Soren Tamsin Ulric Vesna Wendel Xara Yorick Zelda Alvar Brisa Cato Delphine"
).split()
LAST_NAMES = (
    "Voss Marden Kettle Ashgrove Brandt Calloway Dunmore Everly Falk Grimsby Holloway Ingram Jessup "
    "Korvath Lindqvist Morrow Nettle Oakhurst Pemberton Quarry Rowntree Stellan Thorne Underhill "
    "Varga Whitlock Yarrow Zeller Abernath Blackwood"
).split()
PLACES = (
    "Norvale Kestrin Ambermoor Delford Eastlyn Fairhold Glenbrook Harrowgate Ironbridge Juniper "
    "Kingsreach Larkspur Millbrook Northwatch Oldcastle Pinecrest Queensferry Riverton Silverdale "
    "Thornfield Umberlake Westmarch"
).split()
ORG_TEMPLATES = (
    "University of {p}",
    "{p} Institute of Technology",
    "{p} State University",
    "{p} Research Laboratory",
    "National Center for Advanced Studies {p}",
    "{p} College",
    "{p} Systems Group",
)
FIELDS = (
    "Computer Science", "Physics", "Applied Mathematics", "Chemistry", "Biology", "Electrical Engineering",
    "Economics", "Linguistics", "Statistics", "Materials Science",
)
DEGREES = ("Ph.D.", "M.Sc.", "B.Sc.", "M.A.", "B.A.", "MBA", "M.Eng.")
POSITIONS = (
    "Assistant Professor", "Associate Professor", "Professor", "Research Scientist",
    "Postdoctoral Researcher", "Senior Engineer", "Lecturer", "Visiting Scholar",
)
TOPICS = (
    "machine learning", "graph theory", "protein folding", "data compression", "robot navigation",
    "climate modeling", "speech recognition", "quantum computing", "computer vision",
    "information retrieval", "network security", "numerical optimization", "signal processing",
    "computational linguistics", "distributed systems", "causal inference", "program synthesis",
    "medical imaging", "game theory", "energy storage",
)
AWARD_ADJECTIVES = (
    "Early Career", "Best Paper", "Outstanding Teaching", "Distinguished Service", "Young Investigator",
    "Excellence in Research", "Lifetime Achievement",
)
AWARD_NOUNS = ("Award", "Prize", "Medal", "Fellowship")
MONTHS = ("January February March April May June July August September October November December").split()
YEARS = tuple(str(y) for y in range(1980, 2025))
HEADINGS = {
    "biography": "Biography", "research": "Research", "education": "Education",
    "experience": "Experience", "awards": "Awards",
}
FILLER_HEADINGS = ("News", "Teaching", "Service", "Talks", "Group", "Projects", "Students", "Links")
# Entity-free filler: none of these words is ever inside an entity.
FILLER_WORDS = (
    "the a an and or but with without about into over under between during after before while "
    "this that these those our their its we they it he she also often many several some each "
    "new recent current main general simple robust efficient practical theoretical large small "
    "early final open shared public joint weekly regular "
    "project course seminar group team lab meeting workshop talk lecture paper report result "
    "method model system tool study problem question idea approach analysis design experiment "
    "student colleague visitor member page site list schedule topic material code data set "
    "version release update note week month term session room office hour "
    "study studies develop develops developed build builds present presents discuss discusses "
    "organize organizes teach teaches supervise supervises review reviews write writes visit "
    "visits join joined lead leads led welcome welcomes is are was were has have had will can "
    "may should to of in on at for from by as is".split()
)
WORK_FILLER = (
    "managed designed taught supervised coordinated evaluated built maintained improved several "
    "projects courses students prototypes experiments tools budgets teams reports pipelines "
    "benchmarks for with and the a of on in internal external".split()
)
THESIS_FILLER = (
    "thesis dissertation on about methods models analysis of the a and for in with under "
    "supervision new efficient structured robust theory practice".split()
)
SENTENCE_STARTERS = ("We", "Our", "The", "This", "Each", "Many")
CUE_WORDS = (
    "Dr. Prof. Email Phone My research interests include joined in as at is a an , . : - ( ) + @ "
    "edu org com He She The group works with".split()
)


def lexicon_words() -> list[str]:
    """Every whole word the generator writes (after `split_words`), in a fixed order."""
    pieces: list[str] = []
    pieces += FIRST_NAMES + LAST_NAMES + PLACES
    pieces += [n.lower() for n in FIRST_NAMES + LAST_NAMES + PLACES]
    pieces += list(ORG_TEMPLATES) + list(FIELDS) + list(DEGREES) + list(POSITIONS) + list(TOPICS)
    pieces += list(AWARD_ADJECTIVES) + list(AWARD_NOUNS) + MONTHS + list(YEARS)
    pieces += list(HEADINGS.values()) + list(FILLER_HEADINGS)
    pieces += list(FILLER_WORDS) + list(WORK_FILLER) + list(THESIS_FILLER) + list(CUE_WORDS)
    pieces += list(SENTENCE_STARTERS)
    words: dict[str, None] = {}
    for piece in pieces:
        for word in split_words(piece.replace("{p}", ""))[0]:
            if len(word) > 1:  # single characters are covered by the character fallback
                words[word] = None
    return list(words)
