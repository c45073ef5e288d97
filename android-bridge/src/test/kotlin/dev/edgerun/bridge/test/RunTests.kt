package dev.edgerun.bridge.test

import kotlin.system.exitProcess

/**
 * A tiny test runner (the compiler ships kotlin-test's assertions but no JUnit): suites register named
 * cases; each case passes, fails (any Throwable) or is skipped ([skip]). One line per case:
 * `ok   suite/case (12 ms)`, `FAIL suite/case: message` (+ stack trace), `skip suite/case: reason`.
 */
class Suite(val name: String) {
    internal val cases = ArrayList<Pair<String, () -> Unit>>()

    fun test(name: String, body: () -> Unit) {
        cases += name to body
    }
}

/** Thrown by [skip] to mark a case skipped. */
class Skipped(reason: String) : RuntimeException(reason)

fun skip(reason: String): Nothing = throw Skipped(reason)

/** A machine-readable fact for tests/android/ to cross-check: `REPORT key=<json string>`. */
fun report(key: String, value: String) {
    println("REPORT $key=" + dev.edgerun.bridge.Json.stringify(value))
}

fun runSuites(suites: List<Suite>, only: String?): Int {
    var passed = 0
    var failed = 0
    var skipped = 0
    for (suite in suites) {
        for ((case, body) in suite.cases) {
            val id = "${suite.name}/$case"
            if (only != null && !id.contains(only)) continue
            val t0 = System.nanoTime()
            try {
                body()
                passed++
                println("ok   $id (${(System.nanoTime() - t0) / 1_000_000} ms)")
            } catch (s: Skipped) {
                skipped++
                println("skip $id: ${s.message}")
            } catch (t: Throwable) {
                failed++
                println("FAIL $id: ${t::class.simpleName}: ${t.message}")
                t.printStackTrace(System.out)
            }
            System.out.flush()
        }
    }
    println("$passed passed, $failed failed, $skipped skipped")
    return if (failed == 0) 0 else 1
}

/**
 * `unit` runs the tests that need no server; `live URL [API_KEY]` adds those against a running
 * `edge-run serve`; `json-echo` re-encodes one JSON document per stdin line (cross-checked against
 * Python's json module by tests/android/). `--only TEXT` runs the cases whose id contains TEXT.
 */
fun main(args: Array<String>) {
    val rest = args.toMutableList()
    var only: String? = null
    val o = rest.indexOf("--only")
    if (o >= 0) {
        only = rest.getOrNull(o + 1)
        rest.removeAt(o)
        if (o < rest.size) rest.removeAt(o)
    }
    val suites = mutableListOf(jsonSuite(), sseSuite(), errorSuite(), transportSuite())
    when (rest.firstOrNull()) {
        "unit" -> {}
        "live" -> {
            val url = rest.getOrNull(1) ?: usage()
            suites += liveSuite(url, rest.getOrNull(2))
        }
        "json-echo" -> {
            jsonEcho()
            return
        }
        else -> usage()
    }
    exitProcess(runSuites(suites, only))
}

private fun usage(): Nothing {
    System.err.println("usage: RunTestsKt unit | live URL [API_KEY] | json-echo   [--only TEXT]")
    exitProcess(2)
}

private fun jsonEcho() {
    val reader = System.`in`.bufferedReader(Charsets.UTF_8)
    val out = java.io.PrintStream(java.io.FileOutputStream(java.io.FileDescriptor.out), false, "UTF-8")
    while (true) {
        val line = reader.readLine() ?: break
        val answer = try {
            dev.edgerun.bridge.Json.stringify(dev.edgerun.bridge.Json.parse(line))
        } catch (e: dev.edgerun.bridge.JsonException) {
            "ERROR " + e.message
        }
        out.println(answer)
    }
    out.flush()
}
