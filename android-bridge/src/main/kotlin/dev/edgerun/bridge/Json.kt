package dev.edgerun.bridge

/**
 * A small, strict JSON codec (RFC 8259) so the bridge needs nothing beyond the JDK / Android platform.
 *
 * Decoded values are plain Kotlin values: `null`, [Boolean], [String], [Long] (integers that fit),
 * [Double] (everything else numeric), [List] and [Map] with [String] keys (insertion order kept).
 * Encoding accepts the same plus other [Number]s, arrays, [Collection]s and [Map]s with String keys.
 */
object Json {
    /** Nesting deeper than this is rejected instead of overflowing the stack. */
    const val MAX_DEPTH: Int = 512

    /** Parse one JSON document; throws [JsonException] naming the offset of the first error. */
    @JvmStatic
    fun parse(text: String): Any? = Parser(text).document()

    /** Encode [value] as compact JSON; throws [IllegalArgumentException] for values JSON cannot hold. */
    @JvmStatic
    fun stringify(value: Any?): String = StringBuilder().also { write(it, value, 0) }.toString()

    private fun write(out: StringBuilder, value: Any?, depth: Int) {
        require(depth <= MAX_DEPTH) { "JSON nesting deeper than $MAX_DEPTH levels" }
        when (value) {
            null -> out.append("null")
            is Boolean -> out.append(value)
            is String -> quote(out, value)
            is Char -> quote(out, value.toString())
            is Double -> out.append(finite(value))
            is Float -> {
                require(value.isFinite()) { "JSON cannot hold the number $value" }
                out.append(value.toString())
            }
            is Number -> out.append(value.toString()) // Int, Long, Short, Byte, BigInteger, BigDecimal
            is Map<*, *> -> {
                out.append('{')
                var first = true
                for ((k, v) in value) {
                    require(k is String) { "JSON object keys must be strings, got ${k?.let { it::class.simpleName }}" }
                    if (!first) out.append(',')
                    first = false
                    quote(out, k)
                    out.append(':')
                    write(out, v, depth + 1)
                }
                out.append('}')
            }
            is Collection<*> -> writeArray(out, value, depth)
            is Array<*> -> writeArray(out, value.asList(), depth)
            is IntArray -> writeArray(out, value.asList(), depth)
            is LongArray -> writeArray(out, value.asList(), depth)
            is DoubleArray -> writeArray(out, value.asList(), depth)
            is FloatArray -> writeArray(out, value.asList(), depth)
            else -> throw IllegalArgumentException("JSON cannot hold a ${value::class.qualifiedName}")
        }
    }

    private fun writeArray(out: StringBuilder, items: Collection<*>, depth: Int) {
        out.append('[')
        var first = true
        for (item in items) {
            if (!first) out.append(',')
            first = false
            write(out, item, depth + 1)
        }
        out.append(']')
    }

    private fun finite(d: Double): String {
        require(d.isFinite()) { "JSON cannot hold the number $d" }
        return d.toString() // "1.0", "1.0E-5": both valid JSON numbers
    }

    private fun quote(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when (c) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                '\b' -> out.append("\\b")
                '\u000C' -> out.append("\\f")
                '\u2028', '\u2029' -> out.append("\\u").append(Integer.toHexString(c.code))
                else -> if (c.code < 0x20) {
                    out.append("\\u00").append(HEX[c.code shr 4]).append(HEX[c.code and 0xF])
                } else {
                    out.append(c)
                }
            }
        }
        out.append('"')
    }

    private val HEX = "0123456789abcdef".toCharArray()

    private class Parser(private val s: String) {
        private var i = 0

        fun document(): Any? {
            skipWs()
            val v = value(0)
            skipWs()
            if (i != s.length) fail("unexpected '${s[i]}' after the JSON value")
            return v
        }

        private fun fail(msg: String): Nothing = throw JsonException("$msg at offset $i", i)

        private fun skipWs() {
            while (i < s.length && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++
        }

        private fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) fail("JSON nesting deeper than $MAX_DEPTH levels")
            if (i >= s.length) fail("unexpected end of input")
            return when (val c = s[i]) {
                '{' -> obj(depth)
                '[' -> arr(depth)
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c in '0'..'9') num() else fail("unexpected '$c'")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, i)) fail("invalid literal")
            i += word.length
            return v
        }

        private fun obj(depth: Int): Map<String, Any?> {
            i++ // {
            val m = LinkedHashMap<String, Any?>()
            skipWs()
            if (i < s.length && s[i] == '}') { i++; return m }
            while (true) {
                skipWs()
                if (i >= s.length || s[i] != '"') fail("expected a string key")
                val k = str()
                skipWs()
                if (i >= s.length || s[i] != ':') fail("expected ':'")
                i++
                skipWs()
                m[k] = value(depth + 1)
                skipWs()
                if (i >= s.length) fail("unexpected end of input in object")
                when (s[i++]) {
                    ',' -> continue
                    '}' -> return m
                    else -> { i--; fail("expected ',' or '}'") }
                }
            }
        }

        private fun arr(depth: Int): List<Any?> {
            i++ // [
            val l = ArrayList<Any?>()
            skipWs()
            if (i < s.length && s[i] == ']') { i++; return l }
            while (true) {
                skipWs()
                l.add(value(depth + 1))
                skipWs()
                if (i >= s.length) fail("unexpected end of input in array")
                when (s[i++]) {
                    ',' -> continue
                    ']' -> return l
                    else -> { i--; fail("expected ',' or ']'") }
                }
            }
        }

        private fun str(): String {
            i++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (i >= s.length) fail("unterminated string")
                val c = s[i++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (i >= s.length) fail("unterminated escape")
                        when (val e = s[i++]) {
                            '"' -> sb.append('"')
                            '\\' -> sb.append('\\')
                            '/' -> sb.append('/')
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) fail("truncated \\u escape")
                                var code = 0
                                for (k in 0 until 4) {
                                    val d = Character.digit(s[i + k], 16)
                                    if (d < 0) fail("bad hex digit '${s[i + k]}' in \\u escape")
                                    code = code * 16 + d
                                }
                                i += 4
                                sb.append(code.toChar()) // surrogate pairs arrive as two escapes and recombine
                            }
                            else -> { i--; fail("invalid escape '\\$e'") }
                        }
                    }
                    c.code < 0x20 -> { i--; fail("unescaped control character U+%04X in string".format(c.code)) }
                    else -> sb.append(c)
                }
            }
        }

        private fun num(): Any {
            val start = i
            if (s[i] == '-') i++
            if (i >= s.length) fail("truncated number")
            if (s[i] == '0') {
                i++
                if (i < s.length && s[i] in '0'..'9') fail("leading zeros are not allowed")
            } else if (s[i] in '1'..'9') {
                while (i < s.length && s[i] in '0'..'9') i++
            } else {
                fail("expected a digit")
            }
            var integral = true
            if (i < s.length && s[i] == '.') {
                integral = false
                i++
                if (i >= s.length || s[i] !in '0'..'9') fail("expected a digit after '.'")
                while (i < s.length && s[i] in '0'..'9') i++
            }
            if (i < s.length && (s[i] == 'e' || s[i] == 'E')) {
                integral = false
                i++
                if (i < s.length && (s[i] == '+' || s[i] == '-')) i++
                if (i >= s.length || s[i] !in '0'..'9') fail("expected a digit in the exponent")
                while (i < s.length && s[i] in '0'..'9') i++
            }
            val text = s.substring(start, i)
            if (integral) text.toLongOrNull()?.let { return it }
            return text.toDouble()
        }
    }
}

/** Malformed JSON; [offset] is the character index where parsing stopped. */
class JsonException(message: String, val offset: Int) : IllegalArgumentException(message)
