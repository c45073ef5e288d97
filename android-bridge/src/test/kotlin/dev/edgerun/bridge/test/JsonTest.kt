package dev.edgerun.bridge.test

import dev.edgerun.bridge.Json
import dev.edgerun.bridge.JsonException
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

fun jsonSuite() = Suite("json").apply {
    test("parses every value kind") {
        val doc = Json.parse("""{"a":[1,-2,3.5,true,false,null,"x"],"b":{},"c":[],"d":{"e":"f"}}""")
        assertEquals(
            mapOf(
                "a" to listOf(1L, -2L, 3.5, true, false, null, "x"),
                "b" to emptyMap<String, Any?>(), "c" to emptyList<Any?>(), "d" to mapOf("e" to "f"),
            ),
            doc,
        )
    }

    test("keeps object key order") {
        val doc = Json.parse("""{"z":1,"a":2,"m":3}""") as Map<*, *>
        assertEquals(listOf("z", "a", "m"), doc.keys.toList())
    }

    test("numbers: integers as Long, the rest as Double") {
        val cases = mapOf(
            "0" to 0L, "-0" to 0L, "12" to 12L, "-12" to -12L, "9223372036854775807" to Long.MAX_VALUE,
            "-9223372036854775808" to Long.MIN_VALUE, "9223372036854775808" to 9.223372036854775808E18,
            "1.5" to 1.5, "-0.25" to -0.25, "1e3" to 1000.0, "1E-2" to 0.01, "-1.5e+2" to -150.0, "0.0" to 0.0,
        )
        for ((text, want) in cases) assertEquals(want, Json.parse(text), "parsing $text")
    }

    test("string escapes and unicode") {
        assertEquals("\" \\ / \b \u000C \n \r \t", Json.parse("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\""))
        assertEquals("é", Json.parse("\"\\u00e9\""))
        assertEquals("é", Json.parse("\"\\u00E9\""))
        assertEquals("\uD83D\uDE00", Json.parse("\"\\ud83d\\ude00\"")) // surrogate pair -> one emoji
        assertEquals("日本語 😀", Json.parse("\"日本語 😀\""))
    }

    test("whitespace around tokens") {
        assertEquals(listOf(1L, mapOf("a" to 2L)), Json.parse(" \n\t[ 1 ,\r\n { \"a\" : 2 } ] \n"))
    }

    test("rejects malformed documents with an offset") {
        val bad = listOf(
            "", " ", "01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "[1,]", "{\"a\":1,}", "{a:1}", "'x'",
            "tru", "nul", "falsy", "\"\t\"", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "[1 2]", "1 2", "\"abc",
            "{\"a\" 1}", "{\"a\":}", "[", "{", "]", "NaN", "Infinity", "-Infinity", "[1,,2]", "{,}", "\u0000",
        )
        for (text in bad) {
            val e = assertFailsWith<JsonException>("should reject ${Json.stringify(text)}") { Json.parse(text) }
            assertTrue(e.offset in 0..text.length, "offset ${e.offset} inside ${Json.stringify(text)}")
        }
        assertEquals(3, assertFailsWith<JsonException> { Json.parse("[1,]") }.offset)
        assertEquals(2, assertFailsWith<JsonException> { Json.parse("1 2") }.offset)
    }

    test("deep nesting fails cleanly, not with a stack overflow") {
        val deep = "[".repeat(Json.MAX_DEPTH + 10) + "]".repeat(Json.MAX_DEPTH + 10)
        assertFailsWith<JsonException> { Json.parse(deep) }
        val ok = "[".repeat(100) + "]".repeat(100)
        var v: Any? = Json.parse(ok)
        var depth = 0
        while (v is List<*> && v.isNotEmpty()) { v = v[0]; depth++ }
        assertEquals(99, depth)
    }

    test("stringify escapes what JSON requires") {
        assertEquals("\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\"", Json.stringify("a\"b\\c\n\r\t\b\u000C\u0001\u001F"))
        assertEquals("\"\\u2028\\u2029/é😀\"", Json.stringify("\u2028\u2029/é😀"))
    }

    test("stringify values and containers") {
        assertEquals(
            """{"s":"x","i":1,"l":9223372036854775807,"d":0.5,"f":0.1,"b":true,"n":null,"list":[1,"2"],""" +
                """"arr":[1,2],"ints":[3,4],"nested":{"k":[]}}""",
            Json.stringify(
                linkedMapOf(
                    "s" to "x", "i" to 1, "l" to Long.MAX_VALUE, "d" to 0.5, "f" to 0.1f, "b" to true, "n" to null,
                    "list" to listOf(1, "2"), "arr" to arrayOf(1, 2), "ints" to intArrayOf(3, 4),
                    "nested" to mapOf("k" to emptyList<Int>()),
                ),
            ),
        )
    }

    test("stringify rejects what JSON cannot hold") {
        assertFailsWith<IllegalArgumentException> { Json.stringify(Double.NaN) }
        assertFailsWith<IllegalArgumentException> { Json.stringify(listOf(Double.POSITIVE_INFINITY)) }
        assertFailsWith<IllegalArgumentException> { Json.stringify(Float.NaN) }
        assertFailsWith<IllegalArgumentException> { Json.stringify(mapOf(1 to "a")) }
        assertFailsWith<IllegalArgumentException> { Json.stringify(Any()) }
    }

    test("doubles round-trip exactly") {
        val rnd = java.util.Random(7)
        val values = mutableListOf(0.1, 1e-300, 1e300, 123456.789, -2.5e-8, Double.MIN_VALUE, Double.MAX_VALUE, 1.0 / 3)
        repeat(2000) { values += java.lang.Double.longBitsToDouble(rnd.nextLong()).takeIf { it.isFinite() } ?: 1.0 }
        for (d in values) assertEquals(d, Json.parse(Json.stringify(d)), "round trip of $d")
    }

    test("parse(stringify(x)) == x for nested values") {
        val x = mapOf(
            "messages" to listOf(mapOf("role" to "user", "content" to "line1\nline2 \"quoted\" \u0007 😀")),
            "n" to listOf(-1L, 0L, 42L, 1.25, -3.0E-7), "flags" to listOf(true, false, null),
        )
        assertEquals(x, Json.parse(Json.stringify(x)))
    }
}
