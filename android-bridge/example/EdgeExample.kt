package dev.edgerun.example

import dev.edgerun.bridge.ChatMessage
import dev.edgerun.bridge.ChatOptions
import dev.edgerun.bridge.EdgeClient
import dev.edgerun.bridge.EdgeException
import kotlin.system.exitProcess

/**
 * The bridge from a plain JVM program: check the runtime, list its models, stream one answer.
 *
 *   edge-run serve --port 8080 &
 *   android-bridge/build.sh run-example http://127.0.0.1:8080
 */
fun main(args: Array<String>) {
    val client = EdgeClient(args.firstOrNull() ?: EdgeClient.DEFAULT_BASE_URL, apiKey = System.getenv("EDGE_API_KEY"))
    try {
        println("health: ${client.health().status}")
        for (m in client.models()) println("model: ${m.id} (${m.task}, loaded=${m.loaded})")

        val question = listOf(ChatMessage.user("In one sentence, what is a phone?"))
        print("answer: ")
        val stream = client.chatStream(question, ChatOptions(maxTokens = 48, temperature = 0.0)) { token ->
            print(token)
            System.out.flush()
        }
        val answer = stream.await()
        println()
        println("chars: ${answer.length}")
    } catch (e: EdgeException.Unreachable) {
        System.err.println(e.message)
        exitProcess(3)
    } catch (e: EdgeException) {
        System.err.println("edge-run error: ${e.message}")
        exitProcess(1)
    }
}
