#!/usr/bin/env python3
"""Generate the sample PDFs of the Ledgerly knowledge base.

The PDFs are committed; rerun this script only to change them:

    python3 -m venv .cache/venv-index && .cache/venv-index/bin/pip install reportlab==4.*
    .cache/venv-index/bin/python examples/kb/pdf/make_pdfs.py

Output is byte-for-byte deterministic (reportlab "invariant" mode) so the source digests of the index
do not change when the script is rerun, and the PDF ModDate carries the document's real revision date
(the ingester reads it as `last_modified`).
"""

from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

OUT = Path(__file__).resolve().parent
STYLES = getSampleStyleSheet()


def table(rows):
    t = Table(rows, hAlign="LEFT")
    t.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
            ]
        )
    )
    return t


def build(name, title, modified, story):
    """modified: 'YYYYMMDDhhmmss' UTC, written as the PDF CreationDate and ModDate."""

    def stamp(canvas, _doc):
        canvas._doc.setDateFormatter(lambda *_: f"D:{modified}Z")

    doc = SimpleDocTemplate(
        str(OUT / name), pagesize=A4, title=title, author="Ledgerly Support", invariant=1
    )
    doc.build(story, onFirstPage=stamp, onLaterPages=stamp)


def h(text, level=1):
    return Paragraph(text, STYLES[f"Heading{level}"])


def p(text):
    return Paragraph(text, STYLES["BodyText"])


build(
    "pricing-2026.pdf",
    "Ledgerly Plans and Pricing 2026",
    "20260904090000",
    [
        h("Ledgerly Plans and Pricing 2026"),
        p("Prices are in US dollars and exclude sales tax and VAT. Annual prices are billed once "
          "per year and are equivalent to two months free."),
        h("Plan comparison", 2),
        table([
            ["Plan", "Monthly price", "Annual price", "Seats included", "Invoices per month"],
            ["Starter", "$12", "$120", "1", "50"],
            ["Growth", "$39", "$390", "5", "1,000"],
            ["Scale", "$99", "$990", "20", "Unlimited"],
            ["Enterprise", "Custom", "Custom", "Unlimited", "Unlimited"],
        ]),
        Spacer(1, 12),
        h("Extra seats and overages", 2),
        p("Extra seats cost $8 per seat per month on Growth and $6 per seat per month on Scale. "
          "Starter cannot add seats; upgrade to Growth instead. Invoices above the monthly limit of "
          "the Starter plan are queued until the next billing period."),
        h("Discounts", 2),
        p("Registered non-profits and schools receive 30% off any annual plan. Discounts are "
          "applied by the billing team after verification and cannot be combined."),
    ],
)

build(
    "sla.pdf",
    "Ledgerly Support Service Level Agreement",
    "20260615120000",
    [
        h("Ledgerly Support Service Level Agreement"),
        p("This agreement defines support response targets and uptime commitments for paid plans."),
        h("Response targets", 2),
        table([
            ["Severity", "Example", "First response", "Plans"],
            ["P1 Critical", "Invoicing is down for all users", "1 hour", "Scale, Enterprise"],
            ["P2 High", "Payments fail for some customers", "4 hours", "Growth, Scale, Enterprise"],
            ["P3 Normal", "A report shows wrong totals", "1 business day", "All paid plans"],
            ["P4 Low", "Question or feature request", "3 business days", "All plans"],
        ]),
        Spacer(1, 12),
        h("Uptime credits", 2),
        table([
            ["Monthly uptime", "Service credit"],
            ["99.0% to 99.9%", "10% of the monthly fee"],
            ["95.0% to 99.0%", "25% of the monthly fee"],
            ["Below 95.0%", "50% of the monthly fee"],
        ]),
        Spacer(1, 12),
        p("Service credits must be requested within 30 days of the incident by contacting support. "
          "Credits are applied to the next invoice and are never paid out in cash."),
    ],
)
