"""Row → document: render the template, hash the text, embed, validate and convert the fields."""
