"""The extraction benchmark's tasks: texts of the shapes people extract, each with its schema
written as a user writes one (no ``additionalProperties``, no strict flag) and the gold values.

``gold`` holds every value the text states; a field of the schema missing from ``gold`` is
not in the text, and the right answer leaves it out (or null).
"""

from __future__ import annotations

from typing import Any

S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741
N = {"type": "number"}
B = {"type": "boolean"}

PERSON = {"type": "object", "properties": {"name": S, "age": I, "city": S, "email": S},
          "required": ["name", "age"]}
CONTACT = {"type": "object", "properties": {
    "company": S, "contact_name": S, "phone": S, "email": S, "country": S},
    "required": ["company", "contact_name"]}
INVOICE = {"type": "object", "properties": {
    "invoice_number": S, "customer": S,
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "description": S, "quantity": I, "unit_price": N},
        "required": ["description", "quantity", "unit_price"]}},
    "total": N}, "required": ["invoice_number", "customer", "items", "total"]}
ORDER = {"type": "object", "properties": {
    "order_id": S,
    "customer": {"type": "object", "properties": {"name": S, "city": S},
                 "required": ["name"]},
    "products": {"type": "array", "items": {"type": "object", "properties": {
        "name": S, "count": I}, "required": ["name", "count"]}},
    "express": B}, "required": ["order_id", "customer", "products"]}
EVENT = {"type": "object", "properties": {
    "title": S,
    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
    "start_time": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"},
    "location": S}, "required": ["title", "date", "start_time"]}
REVIEW = {"type": "object", "properties": {
    "product": S,
    "rating": {"type": "integer", "minimum": 1, "maximum": 5},
    "sentiment": {"enum": ["positive", "neutral", "negative"]},
    "reviewer": S}, "required": ["product", "rating", "sentiment"]}
LISTING = {"type": "object", "properties": {
    "city": S, "bedrooms": I, "price": N, "furnished": B, "pets_allowed": B},
    "required": ["city", "bedrooms", "price", "furnished"]}
PEOPLE = {"type": "array", "items": {"type": "object", "properties": {
    "name": S, "city": S, "age": I}, "required": ["name", "city", "age"]}}


def task(name: str, schema: Any, text: str, gold: Any) -> dict[str, Any]:
    return {"name": name, "schema": schema, "text": text, "gold": gold}


TASKS: list[dict[str, Any]] = [
    task("person-1", PERSON, "Jane Doe, 42, lives in Lyon and can be reached at "
         "jane.doe@example.com.", {"name": "Jane Doe", "age": 42, "city": "Lyon",
                                   "email": "jane.doe@example.com"}),
    task("person-2", PERSON, "Our new hire is Tom Berg. He is 29 years old and moved here "
         "from Oslo.", {"name": "Tom Berg", "age": 29, "city": "Oslo"}),
    task("person-3", PERSON, "Maria Garcia (age 35) works from Madrid. Write to "
         "maria@garcia.es.", {"name": "Maria Garcia", "age": 35, "city": "Madrid",
                              "email": "maria@garcia.es"}),
    task("person-4", PERSON, "Ken Ito is 61.", {"name": "Ken Ito", "age": 61}),
    task("person-5", PERSON, "Anna Schmidt, a 23-year-old student from Berlin.",
         {"name": "Anna Schmidt", "age": 23, "city": "Berlin"}),
    task("contact-1", CONTACT, "Acme Corp. Contact: John Smith, phone +1 555 0100, "
         "john@acme.com, USA.", {"company": "Acme Corp", "contact_name": "John Smith",
                                 "phone": "+1 555 0100", "email": "john@acme.com",
                                 "country": "USA"}),
    task("contact-2", CONTACT, "For Nordic Timber AB please call Eva Lund on 08 123 456.",
         {"company": "Nordic Timber AB", "contact_name": "Eva Lund", "phone": "08 123 456"}),
    task("contact-3", CONTACT, "Write to Paul Martin at Bleu Design (France): "
         "paul@bleu.fr.", {"company": "Bleu Design", "contact_name": "Paul Martin",
                           "email": "paul@bleu.fr", "country": "France"}),
    task("contact-4", CONTACT, "Globex Ltd, account manager Sara Khan.",
         {"company": "Globex Ltd", "contact_name": "Sara Khan"}),
    task("invoice-1", INVOICE, "Invoice INV-1001 for Bob's Bakery: 2 bags of flour at 3.50 "
         "each, 1 oven mitt at 7.25. Total 14.25.",
         {"invoice_number": "INV-1001", "customer": "Bob's Bakery", "items": [
             {"description": "bags of flour", "quantity": 2, "unit_price": 3.5},
             {"description": "oven mitt", "quantity": 1, "unit_price": 7.25}],
          "total": 14.25}),
    task("invoice-2", INVOICE, "Invoice 77-B, customer Delta Inc. 10 pens at 1.20. "
         "Total: 12.00.", {"invoice_number": "77-B", "customer": "Delta Inc", "items": [
             {"description": "pens", "quantity": 10, "unit_price": 1.2}], "total": 12.0}),
    task("invoice-3", INVOICE, "Invoice A-3 to Green Farm: 3 shovels at 20 each and 5 "
         "gloves at 4 each. Total 80.", {"invoice_number": "A-3", "customer": "Green Farm",
                                         "items": [
             {"description": "shovels", "quantity": 3, "unit_price": 20},
             {"description": "gloves", "quantity": 5, "unit_price": 4}], "total": 80}),
    task("invoice-4", INVOICE, "Invoice 2024-9 billed to City Library: 1 scanner at 199.99. "
         "Total 199.99.", {"invoice_number": "2024-9", "customer": "City Library", "items": [
             {"description": "scanner", "quantity": 1, "unit_price": 199.99}],
          "total": 199.99}),
    task("order-1", ORDER, "Order #5521 from Liam Brown in Dublin: 2 lamps and 1 rug, "
         "express shipping.", {"order_id": "5521", "customer": {"name": "Liam Brown",
                                                                "city": "Dublin"},
                               "products": [{"name": "lamps", "count": 2},
                                            {"name": "rug", "count": 1}], "express": True}),
    task("order-2", ORDER, "Order 880 for Nina Petrova: 4 mugs. Standard shipping, not "
         "express.", {"order_id": "880", "customer": {"name": "Nina Petrova"},
                      "products": [{"name": "mugs", "count": 4}], "express": False}),
    task("order-3", ORDER, "Order X12 by Omar Ali of Cairo: 3 notebooks.",
         {"order_id": "X12", "customer": {"name": "Omar Ali", "city": "Cairo"},
          "products": [{"name": "notebooks", "count": 3}]}),
    task("order-4", ORDER, "Order 301 from Chen Wei, Shanghai: 1 kettle, 6 cups and 2 "
         "plates. Express.", {"order_id": "301", "customer": {"name": "Chen Wei",
                                                               "city": "Shanghai"},
                              "products": [{"name": "kettle", "count": 1},
                                           {"name": "cups", "count": 6},
                                           {"name": "plates", "count": 2}], "express": True}),
    task("event-1", EVENT, "Team meeting on 2025-03-14 at 09:30 in Room 4.",
         {"title": "Team meeting", "date": "2025-03-14", "start_time": "09:30",
          "location": "Room 4"}),
    task("event-2", EVENT, "The Jazz Night starts 2024-11-02 at 20:00 at the Blue Club.",
         {"title": "Jazz Night", "date": "2024-11-02", "start_time": "20:00",
          "location": "Blue Club"}),
    task("event-3", EVENT, "Dentist appointment: 2025-01-07, 14:15.",
         {"title": "Dentist appointment", "date": "2025-01-07", "start_time": "14:15"}),
    task("event-4", EVENT, "Product launch, 2025-06-30 at 11:00, Hall B.",
         {"title": "Product launch", "date": "2025-06-30", "start_time": "11:00",
          "location": "Hall B"}),
    task("review-1", REVIEW, "The Zen headphones are wonderful, five stars! - Mia",
         {"product": "Zen headphones", "rating": 5, "sentiment": "positive",
          "reviewer": "Mia"}),
    task("review-2", REVIEW, "Rating 1/5. The Turbo blender broke after a day. Terrible.",
         {"product": "Turbo blender", "rating": 1, "sentiment": "negative"}),
    task("review-3", REVIEW, "Alex reviewed the Basic desk lamp: it is fine, 3 out of 5.",
         {"product": "Basic desk lamp", "rating": 3, "sentiment": "neutral",
          "reviewer": "Alex"}),
    task("review-4", REVIEW, "I give the Swift bike 4 stars; I like it a lot.",
         {"product": "Swift bike", "rating": 4, "sentiment": "positive"}),
    task("listing-1", LISTING, "Flat in Paris: 2 bedrooms, 1500 euros a month, furnished, "
         "pets allowed.", {"city": "Paris", "bedrooms": 2, "price": 1500, "furnished": True,
                           "pets_allowed": True}),
    task("listing-2", LISTING, "Rome apartment with 3 bedrooms for 1200, unfurnished, no "
         "pets.", {"city": "Rome", "bedrooms": 3, "price": 1200, "furnished": False,
                   "pets_allowed": False}),
    task("listing-3", LISTING, "Studio in Vienna, 1 bedroom, 850, furnished.",
         {"city": "Vienna", "bedrooms": 1, "price": 850, "furnished": True}),
    task("listing-4", LISTING, "House in Austin: 4 bedrooms, price 2750.5, not furnished.",
         {"city": "Austin", "bedrooms": 4, "price": 2750.5, "furnished": False}),
    task("people-1", PEOPLE, "Ann (Paris, 30), Ben (Rome, 41) and Cy (Oslo, 25) came.",
         [{"name": "Ann", "city": "Paris", "age": 30}, {"name": "Ben", "city": "Rome", "age": 41},
          {"name": "Cy", "city": "Oslo", "age": 25}]),
    task("people-2", PEOPLE, "Guests: Dan from Lima, 52; Eve from Kyiv, 33.",
         [{"name": "Dan", "city": "Lima", "age": 52}, {"name": "Eve", "city": "Kyiv", "age": 33}]),
    task("people-3", PEOPLE, "Six runners: Al (Bern, 20), Bo (Nice, 21), Cat (Pisa, 22), "
         "Di (Graz, 23), Ed (Lund, 24), Flo (Bonn, 25).",
         [{"name": n, "city": c, "age": a} for n, c, a in (
             ("Al", "Bern", 20), ("Bo", "Nice", 21), ("Cat", "Pisa", 22), ("Di", "Graz", 23),
             ("Ed", "Lund", 24), ("Flo", "Bonn", 25))]),
]
